"""Benchmark the `signal` encoder's per-file preparation (decode + librosa/OpenCV features) against real time.

Each file is prepared as an extract worker prepares it (`make_preparer(config)(path)`), after a warm-up
that imports librosa and compiles its numba kernels (paid once per process; reported on its own).
CPU time is this process's (robust to other load on the machine); wall time is shown beside it.

  clicks   6 s, 128x72, 10 fps, a 90 BPM click track: tiny frames, so the audio features dominate
  short    10 s vertical 720x1280, 30 fps, stereo 44.1 kHz: a typical short video
  hd       10 s 1920x1080, 30 fps: decoding and downscaling large frames

    .venv/bin/python -m bench.bench_signal
    .venv/bin/python -m bench.bench_signal --repeats 5 --only clicks

Figures are printed; nothing here is asserted. (The clicks file used to be a test asserting under 3 s of CPU
time, i.e. at least 2x real time; on a loaded 2-core machine that is a benchmark figure, not a correctness check.)
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def click_track(bpm: float, duration: float) -> str:
    period = 60.0 / bpm
    expr = f"0.8*sin(2*PI*1500*t)*lt(mod(t\\,{period:.6f})\\,0.015)"
    return f"aevalsrc='{expr}':s=44100:d={duration}"


def make_media(folder: Path) -> dict[str, tuple[Path, float]]:
    """name -> (file, seconds of media); files are reused when already there."""
    from tests.synth import make_video, run_ffmpeg

    folder.mkdir(parents=True, exist_ok=True)
    clicks = folder / "clicks.mp4"
    if not clicks.exists():
        run_ffmpeg("-f", "lavfi", "-i", "color=c=0x406080:size=128x72:rate=10", "-f", "lavfi", "-i",
                   click_track(90, 6.0), "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p",
                   "-c:a", "aac", "-t", "6.0", str(clicks))
    short = folder / "short.mp4"
    if not short.exists():
        make_video(short, duration=10.0, size=(720, 1280), fps=30, audio_channels=2, sample_rate=44100)
    hd = folder / "hd.mp4"
    if not hd.exists():
        make_video(hd, duration=10.0, size=(1920, 1080), fps=30, audio_channels=2, sample_rate=44100)
    return {"clicks": (clicks, 6.0), "short": (short, 10.0), "hd": (hd, 10.0)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3, help="timed preparations per file (the median is shown)")
    ap.add_argument("--only", choices=["clicks", "short", "hd"], nargs="+", help="just these files")
    ap.add_argument("--media", type=Path, default=Path(tempfile.gettempdir()) / "mvbind-bench-signal")
    args = ap.parse_args()

    from mvbind.pipeline.config import load_config
    from mvbind.pipeline.encoders.base import make_preparer

    print(f"machine: {os.cpu_count()} CPU cores")
    print(f"making the media (cached in {args.media}) …")
    media = make_media(args.media)
    config = load_config(overrides={"encoder.name": "signal"})
    prepare = make_preparer(config)
    t0, c0 = time.perf_counter(), time.process_time()
    prepare.warm_up()
    print(f"warm-up (import librosa, compile its kernels): wall {time.perf_counter() - t0:.2f}s, "
          f"CPU {time.process_time() - c0:.2f}s")
    for name in args.only or list(media):
        path, seconds = media[name]
        walls, cpus = [], []
        for _ in range(args.repeats):
            t0, c0 = time.perf_counter(), time.process_time()
            item = prepare(str(path))
            walls.append(time.perf_counter() - t0)
            cpus.append(time.process_time() - c0)
        cpu, wall = statistics.median(cpus), statistics.median(walls)
        missing = ", ".join(f"no {m}" for m in ("audio", "video") if getattr(item, m) is None)
        print(f"  {name:<7} {seconds:4.1f} s of media: CPU {cpu:6.2f}s, wall {wall:6.2f}s "
              f"= {seconds / cpu:5.1f}x real time (CPU){'   [' + missing + ']' if missing else ''}")


if __name__ == "__main__":
    main()
