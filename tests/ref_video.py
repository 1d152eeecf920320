"""Independent references for the video tests: ffmpeg-decoded frames and upstream's frame rule.

* `ffmpeg_frames`: every frame of a file decoded by the ffmpeg command-line tool in one pass (no
  seeking, no frame skipping, timestamps passed through so that no frame is dropped or
  duplicated), converted to rgb24 by ffmpeg. Frame n is the n-th picture in presentation order,
  which is decord's frame n when every packet holds one picture. Shares no code with PyAV.
* `upstream_frame_indices`: the frames ImageBind keeps, from the reference README (5, 6): clip i
  of n starts at i · max(d − 2, 0) / (n − 1) s (exact fractions of the float duration d = N / fps),
  covers frames ceil(fps·s) … min(ceil(fps·e), N) − 1, and keeps ``linspace(0, T − 1, 2).long()``
  of them: the first and the last.
* `ffmpeg_reported_fps`: the stream's average frame rate as the ffmpeg CLI reports it.
* `bilinear_tolerance`: how far two float32 implementations of the bilinear resize + CLIP
  normalisation may be apart (derivation in its docstring).
"""

from __future__ import annotations

import math
import re
import subprocess
from fractions import Fraction
from pathlib import Path

import numpy as np

from mvbind.pipeline.media.ffmpeg import ffmpeg_exe

U = 2.0**-24


def ffmpeg_frames(path: Path, size: tuple[int, int]) -> np.ndarray:
    """(N, H, W, 3) uint8: every frame of `path` (whose pictures are `size` = (W, H)), by the ffmpeg CLI."""
    cmd = [ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-nostdin", "-i", str(path), "-map", "0:v:0",
           "-fps_mode", "passthrough", "-f", "rawvideo", "-pix_fmt", "rgb24", "-"]  # fmt: skip
    raw = subprocess.run(cmd, capture_output=True, check=True, timeout=120).stdout
    width, height = size
    assert len(raw) % (width * height * 3) == 0, "ffmpeg's output is not a whole number of frames"
    return np.frombuffer(raw, np.uint8).reshape(-1, height, width, 3)


def upstream_frame_indices(num_frames: int, fps: float, clips: int = 5, clip_duration: float = 2.0) -> list[tuple]:
    """The two frames ImageBind keeps for each clip (README "Clip sampler" 5 and "Video" 6)."""
    duration = num_frames / fps
    step = Fraction(max(duration - clip_duration, 0)) / max(clips - 1, 1)
    out = []
    for i in range(clips):
        start = step * i
        end = start + Fraction(clip_duration)
        first = math.ceil(fps * start)  # float · Fraction -> float, as upstream
        stop = min(math.ceil(fps * end), num_frames)
        out.append((first, stop - 1))  # linspace(0, T - 1, 2).long(): the first and the last
    return out


def ffmpeg_reported_fps(path: Path) -> float:
    """The video stream's average frame rate as the ffmpeg CLI prints it (2 decimals: ±0.005)."""
    cmd = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-i", str(path)]
    text = subprocess.run(cmd, capture_output=True, text=True, timeout=60).stderr  # "no output file": rc 1
    found = re.search(r"Stream #\S+: Video: .*?, ([0-9.]+) fps", text)
    assert found, f"no fps in ffmpeg's stream info: {text[-300:]}"
    return float(found.group(1))


def bilinear_tolerance(in_size: int, std: tuple[float, ...] = (1.0,)) -> float:
    """Bound on |a − b| for two float32 bilinear (align_corners=False) resizes of [0, 1] pixels, normalised
    by `std` (the default 1: not normalised).

    A source coordinate ratio·(x + 0.5) − 0.5 is rounded once or twice (fused multiply-add or
    not: PyTorch's vectorised and default CPU kernels differ), so two implementations' coordinates,
    hence their weights, differ by up to 2 ulps at `in_size`. A weight change moves a value by at
    most that times the pixel range (1), on each of the two axes (the second axis carries the
    first's error through weights that sum to 1): 4 ulps. The sums, the /255 and the
    normalisation add a few float32 roundings of values ≤ 1 (16 u). Dividing by the smallest CLIP
    std gives the bound on normalised values.
    """
    return (4 * float(np.spacing(np.float32(in_size))) + 16 * U) / min(std)
