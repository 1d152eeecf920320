"""A preview: the video with a recommended track as its sound (or mixed under its own), made with ffmpeg."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from pathlib import Path

from mvbind.errors import MediaError, MvbindError
from mvbind.pipeline.console import say
from mvbind.pipeline.media.ffmpeg import run_ffmpeg

AUDIO_CODECS = {".webm": "libopus", ".ogv": "libvorbis", ".ogg": "libvorbis", ".avi": "libmp3lame"}  # else aac


def _has_audio(path: Path) -> bool:
    import av

    try:
        with av.open(str(path)) as c:
            return bool(c.streams.audio)
    except Exception:  # noqa: BLE001 - unreadable: let ffmpeg say why
        return False


def write_preview(video: Path, track: Path, start: float, out_dir: Path, *, duration: float, mode: str = "replace",
                  mix_volume: float = 0.3, used: set[str] | None = None,
                  notify: Callable[[str], None] = say) -> tuple[str, str]:
    """The video with `track` from `start` as its sound (mode replace) or mixed under its own (mix).
    The picture is copied, only the audio is re-encoded. Returns (output path, mode used)."""
    ext = video.suffix.lower() or ".mp4"
    name = f"{video.stem}+{track.stem}{ext}"
    used = used if used is not None else set()
    n = 2
    while name in used:
        name = f"{video.stem}+{track.stem}-{n}{ext}"
        n += 1
    used.add(name)
    out = out_dir / name
    if mode == "mix" and not _has_audio(video):
        notify(f"{video}: no audio stream to mix with; the preview's audio is the track alone")
        mode = "replace"
    args = ["-i", str(video), "-ss", f"{max(0.0, start):.3f}", "-i", str(track)]
    if mode == "mix":
        args += ["-filter_complex",
                 f"[0:a:0]volume={mix_volume:g}[orig];[1:a:0]volume=1[music];"
                 "[orig][music]amix=inputs=2:duration=longest:normalize=0[mixed]",
                 "-map", "0:v:0", "-map", "[mixed]"]
    else:
        args += ["-map", "0:v:0", "-map", "1:a:0"]
    args += ["-c:v", "copy", "-c:a", AUDIO_CODECS.get(ext, "aac"), "-t", f"{duration:.3f}"]
    tmp = out_dir / f".tmp-{uuid.uuid4().hex[:8]}-{name}"
    try:
        try:
            run_ffmpeg([*args, str(tmp)], what=out)
        except MediaError as err:
            raise MvbindError(str(err).replace("ffmpeg failed", "ffmpeg could not write the preview")) from None
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return str(out), mode
