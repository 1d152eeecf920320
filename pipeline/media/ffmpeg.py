"""ffmpeg: locate a binary ($MVBIND_FFMPEG, then ffmpeg on PATH, then the one imageio-ffmpeg ships)
and run it (the one runner)."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence
from functools import cache
from pathlib import Path

from mvbind.errors import MediaError


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


def run_ffmpeg(args: Sequence[str], *, what: str | Path = "", data: bytes | None = None,
               timeout: float = 600.0) -> None:
    """Run ffmpeg with `args` (no shell; stdin is `data` or nothing), quietly.

    A failure raises MediaError in one line: `what` (the file being made), then ffmpeg's last
    error line. The one way mvbind runs ffmpeg (previews, the demo generator, test media).
    """
    cmd = [ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-nostdin", "-y", *map(str, args)]
    try:
        proc = subprocess.run(cmd, input=data, stdin=None if data is not None else subprocess.DEVNULL,
                              capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise MediaError(f"{what or 'ffmpeg'}: ffmpeg took more than {timeout:g} s; stopped") from None
    except OSError as err:
        raise MediaError(f"{what or 'ffmpeg'}: cannot run {cmd[0]} ({err.strerror or err}); "
                         "set MVBIND_FFMPEG to an ffmpeg binary") from None
    if proc.returncode != 0:
        tail = proc.stderr.decode("utf-8", "replace").strip().splitlines()
        why = " ".join(tail[-1].split())[-200:] if tail else f"exit code {proc.returncode}"
        raise MediaError(f"{what or 'ffmpeg'}: ffmpeg failed ({why})")
