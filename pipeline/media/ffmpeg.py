"""Locate an ffmpeg binary: $MVBIND_FFMPEG, then ffmpeg on PATH, then the one imageio-ffmpeg ships."""

import os
import shutil
from functools import cache


@cache
def ffmpeg_exe() -> str:
    explicit = os.environ.get("MVBIND_FFMPEG")
    if explicit:
        return explicit
    found = shutil.which("ffmpeg")
    if found:
        return found
    import imageio_ffmpeg  # a pip-installed static ffmpeg: nothing to install by hand

    return imageio_ffmpeg.get_ffmpeg_exe()
