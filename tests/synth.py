"""Synthetic media made with real ffmpeg (no shell) for tests and benchmarks."""

from __future__ import annotations

from pathlib import Path

from mvbind.pipeline.media.audio import write_wav
from mvbind.pipeline.media.ffmpeg import run_ffmpeg as _run


def run_ffmpeg(*args: str, timeout: float = 600.0) -> None:
    """The product's ffmpeg runner with test-friendly positional arguments."""
    _run(list(args), what=args[-1] if args else "", timeout=timeout)


def make_video(
    path: Path,
    *,
    duration: float = 3.0,
    size: tuple[int, int] = (160, 288),
    fps: int = 15,
    audio_channels: int | None = 1,
    freq: float = 440.0,
    sample_rate: int = 16000,
    pad: tuple[int, int] | None = None,
    vcodec: str | None = None,
    acodec: str | None = None,
    source: str = "testsrc2",
    extra: tuple[str, ...] = (),
) -> Path:
    """Write a test video of `size` = (width, height).

    `pad` = (width, height) letterboxes/pillarboxes the picture into a larger black frame.
    `audio_channels=None` writes no audio stream. The codec follows the file extension unless given.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    w, h = size
    args = ["-f", "lavfi", "-i", f"{source}=size={w}x{h}:rate={fps}:duration={duration}"]
    if audio_channels is not None:
        layout = {1: "mono", 2: "stereo", 6: "5.1"}[audio_channels]
        args += ["-f", "lavfi", "-i", f"sine=frequency={freq}:sample_rate={sample_rate}:duration={duration}"]
    vf = []
    if pad is not None:
        pw, ph = pad
        vf.append(f"pad={pw}:{ph}:(ow-iw)/2:(oh-ih)/2:black")
    if vf:
        args += ["-vf", ",".join(vf)]
    args += ["-map", "0:v"]
    if audio_channels is not None:
        args += ["-map", "1:a", "-ac", str(audio_channels), "-channel_layout", layout]
    ext = path.suffix.lower()
    default_v = {".webm": "libvpx", ".ogv": "libtheora", ".avi": "mpeg4"}.get(ext, "libx264")
    default_a = {".webm": "libvorbis", ".ogv": "libvorbis", ".avi": "pcm_s16le"}.get(ext, "aac")
    args += ["-c:v", vcodec or default_v, "-pix_fmt", "yuv420p"]
    if (vcodec or default_v) == "libx264":
        args += ["-preset", "ultrafast"]
    if audio_channels is not None:
        args += ["-c:a", acodec or default_a]
    args += [*extra, "-t", str(duration), str(path)]
    run_ffmpeg(*args)
    return path


def write_samples(folder: Path) -> list[Path]:
    """A handful of short vertical videos for the quickstart (one letterboxed, one silent)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    specs = [
        ("sunrise.mp4", dict(duration=4.0, size=(180, 320), freq=330.0, source="testsrc2")),
        ("city.mp4", dict(duration=6.0, size=(180, 320), freq=523.0, source="smptebars")),
        ("letterboxed.mp4", dict(duration=3.0, size=(180, 100), pad=(180, 320), freq=440.0)),
        ("silent.webm", dict(duration=2.5, size=(180, 320), audio_channels=None, source="rgbtestsrc")),
    ]
    return [make_video(folder / name, **kw) for name, kw in specs if not (folder / name).exists()]


if __name__ == "__main__":
    import sys

    made = write_samples(Path(sys.argv[1] if len(sys.argv) > 1 else "demo/videos"))
    print(f"wrote {len(made)} sample video(s)")


__all__ = ["make_video", "run_ffmpeg", "write_samples", "write_wav"]
