"""ImageBind vision inputs for one video file, decoding only the frames the clips use.

Semantics follow ImageBind's ``load_and_transform_video_data`` (decord + pytorchvideo), see the
reference README "Video" 6-7 and the clip sampler 5:

* frame n is the n-th video packet in presentation-timestamp order (decord's index, built here by
  demuxing without decoding); ``num_frames`` is the packet count, ``fps`` the stream's average
  frame rate, ``duration = num_frames / fps``;
* clip [s, e) covers frames ceil(fps·s) … min(ceil(fps·e), N) − 1 and keeps
  ``linspace(0, T − 1, frames_per_clip).long()`` of them;
* uint8 RGB → /255 → short side to ``size`` (bilinear, no antialias) → CLIP normalisation →
  ``crops`` crops along the long side; output index = crops·clip + crop.

MVBind's black-border removal (``pipeline.borders``) runs on the decoded frames before the resize
when ``remove_borders`` is set. Display-matrix rotation (phone videos) is applied, as decord's
VideoReader does in its current source (GetRotation + transpose filter).

Efficiency: packets are indexed without decoding, the decoder seeks to the keyframe before each
needed frame, skips non-reference frames it does not need, decodes with threads, and only the
needed frames are converted to RGB and resized.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

from mvbind.pipeline.config.schema import VideoSettings
from mvbind.pipeline.media.borders import Box, crop, detect_content_box
from mvbind.pipeline.media.sampler import clip_spans
from mvbind.pipeline.media.video import decode_video, read_frames


@dataclass(frozen=True)
class ClipPlan:
    """Which frames each clip uses (decord frame numbers)."""

    clips: tuple[tuple[Fraction, Fraction], ...]  # [start, end) seconds
    frame_ranges: tuple[tuple[int, int], ...]  # [first, end) decoded range per clip
    frame_indices: tuple[tuple[int, ...], ...]  # the frames_per_clip frames kept per clip


@dataclass(frozen=True)
class VideoInputs:
    """ImageBind vision input of one video plus what was used to make it."""

    frames: torch.Tensor  # (clips·crops, 3, frames_per_clip, size, size) float32
    duration: float  # num_frames / fps (decord's definition)
    fps: float  # the stream's average frame rate
    num_frames: int  # video packets in the file
    crop_box: Box | None  # (x0, y0, x1, y1) kept by border removal; None when it is off
    width: int  # decoded frame size, after rotation
    height: int
    plan: ClipPlan


def clip_plan(num_frames: int, fps: float, settings: VideoSettings) -> ClipPlan:
    """Clip spans, decoded frame ranges and kept frames, exactly as pytorchvideo/decord pick them."""
    duration = num_frames / fps
    spans = clip_spans(duration, settings.clip_duration, settings.clips_per_video)
    ranges, indices = [], []
    for start, end in spans:
        first = math.ceil(fps * start)  # float * Fraction -> float, as upstream
        stop = min(math.ceil(fps * end), num_frames)
        if stop <= first:  # only for fps < 0.5; upstream would fail on an empty clip
            first = min(first, num_frames - 1)
            stop = first + 1
        count = stop - first
        keep = torch.linspace(0, count - 1, settings.frames_per_clip).clamp(0, count - 1).long()
        ranges.append((first, stop))
        indices.append(tuple(first + int(k) for k in keep))
    return ClipPlan(tuple(spans), tuple(ranges), tuple(indices))


def video_inputs(path: str | Path, settings: VideoSettings | None = None, *, threads: int = 0) -> VideoInputs:
    """Decode the needed frames of `path` and build ImageBind's vision input.

    `threads` is the decoder thread count (0 = FFmpeg's choice); it does not change the result.
    Raises NoStreamError without a video stream, MediaError when the file cannot be used.
    """
    return _video_inputs(Path(path), settings or VideoSettings(), threads)


def _video_inputs(path: Path, settings: VideoSettings, threads: int) -> VideoInputs:
    d = _decode(path, settings, threads)
    resized = {i: _resize(d.frame(i), settings.size) for i in d.needed}
    frames = _clips_and_crops(resized, d.plan, settings)
    return VideoInputs(frames, d.count / d.fps, d.fps, d.count, d.box, d.width, d.height, d.plan)


@dataclass(frozen=True)
class _Decoded:
    """The frames a video's clips need, border box applied on access."""

    frames: dict[int, np.ndarray]  # decord frame number -> uint8 (H, W, 3), border probes included
    needed: list[int]  # the frames the clips keep, sorted
    plan: ClipPlan
    box: Box | None
    count: int
    fps: float
    width: int
    height: int

    def frame(self, i: int) -> np.ndarray:
        return crop(self.frames[i], self.box) if self.box else self.frames[i]


def _decode(path: Path, settings: VideoSettings, threads: int) -> _Decoded:
    """Decode the frames the clip plan keeps (plus border probes) and find the content box."""
    chosen: dict[str, object] = {}

    def choose(count: int, fps: float) -> list[int]:
        plan = clip_plan(count, fps, settings)
        needed = sorted({i for kept in plan.frame_indices for i in kept})
        probes: list[int] = []
        if settings.remove_borders and len(needed) < settings.border_probe_frames:
            spread = np.linspace(0, count - 1, settings.border_probe_frames).round().astype(int)
            probes = sorted(set(spread.tolist()) - set(needed))
        chosen.update(plan=plan, needed=needed)
        return needed + probes

    video = decode_video(path, choose, threads=threads)
    decoded, plan, needed = video.frames, chosen["plan"], chosen["needed"]
    height, width = decoded[needed[0]].shape[:2]
    box: Box | None = None
    if settings.remove_borders:
        box = detect_content_box(
            [decoded[i] for i in sorted(decoded)],
            threshold=settings.border_threshold,
            noise_frac=settings.border_noise_frac,
            blank_spread=settings.border_blank_spread,
            max_border_std=settings.border_max_std,
            min_border=settings.border_min_px,
            min_content=settings.border_min_content,
        )
    return _Decoded(decoded, needed, plan, box, video.count, video.fps, width, height)


# ---------------------------------------------------------------------------------------------
# Container, stream, index


# ---------------------------------------------------------------------------------------------
# Selective decoding


# ---------------------------------------------------------------------------------------------
# Transform


def _scaled_size(height: int, width: int, size: int) -> tuple[int, int]:
    """pytorchvideo ShortSideScale: short side -> size, long side floor(long / short * size)."""
    if width < height:
        return int(math.floor((float(height) / width) * size)), size
    return size, int(math.floor((float(width) / height) * size))


@functools.lru_cache(maxsize=64)
def _taps(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Bilinear (align_corners=False) source indices i0, i1 and float32 weights w0, w1 along one axis.

    Same arithmetic as PyTorch's CPU upsample_bilinear2d: float32 ratio in/out, source position
    ratio·(dst + 0.5) − 0.5 rounded once (the kernel's fused multiply-add), clamped at 0.
    """
    if in_size == out_size:
        idx = np.arange(out_size)
        return idx, idx, np.ones(out_size, np.float32), np.zeros(out_size, np.float32)
    ratio = float(np.float32(in_size) / np.float32(out_size))
    src = (ratio * (np.arange(out_size, dtype=np.float64) + 0.5) - 0.5).astype(np.float32)
    src = np.maximum(src, np.float32(0))
    i0 = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    w1 = np.clip(src - i0.astype(np.float32), 0, 1).astype(np.float32)
    i1 = i0 + (i0 < in_size - 1)
    return i0, i1, np.float32(1) - w1, w1


def _resize(frame: np.ndarray, size: int) -> np.ndarray:
    """uint8 (H, W, 3) -> float32 (3, h, w) in [0, 1], short side `size`.

    Equals ``F.interpolate(frame / 255, mode="bilinear", align_corners=False)`` (to float rounding)
    but converts only the source rows the bilinear taps read (2 per output row). Plain numpy:
    single-threaded by design (it runs in data-loader workers; torch's thread pool on many small
    ops costs more than it saves).
    """
    height, width = frame.shape[:2]
    new_h, new_w = _scaled_size(height, width, size)
    r0, r1, a0, a1 = _taps(height, new_h)
    c0, c1, b0, b1 = _taps(width, new_w)
    top = frame[r0].astype(np.float32) / np.float32(255)  # (h, W, 3)
    bottom = frame[r1].astype(np.float32) / np.float32(255)
    rows = (top * a0[:, None, None] + bottom * a1[:, None, None]).transpose(2, 0, 1)  # (3, h, W)
    rows = np.ascontiguousarray(rows)
    return rows[:, :, c0] * b0 + rows[:, :, c1] * b1


def crop_offsets(height: int, width: int, settings: VideoSettings) -> list[tuple[int, int]]:
    """(y, x) of each spatial crop of a resized (height, width) frame: ImageBind's SpatialCrop /
    uniform_crop (3 crops: start, centre, end of the long side; 1 crop: the centre)."""
    size = settings.size
    offsets = []
    for idx in (0, 1, 2) if settings.crops == 3 else (1,):
        y = int(math.ceil((height - size) / 2))
        x = int(math.ceil((width - size) / 2))
        if height > width:
            y = 0 if idx == 0 else height - size if idx == 2 else y
        else:
            x = 0 if idx == 0 else width - size if idx == 2 else x
        offsets.append((y, x))
    return offsets


def _clips_and_crops(resized: dict[int, np.ndarray], plan: ClipPlan, settings: VideoSettings) -> torch.Tensor:
    """Normalise, stack clips (3, T, h, w) and take the spatial crops: (clips·crops, 3, T, s, s)."""
    mean = np.asarray(settings.mean, dtype=np.float32)[:, None, None]
    std = np.asarray(settings.std, dtype=np.float32)[:, None, None]
    normed = {i: (x - mean) / std for i, x in resized.items()}
    size = settings.size
    height, width = next(iter(normed.values())).shape[-2:]
    offsets = crop_offsets(height, width, settings)
    frames = settings.frames_per_clip
    out = np.empty((len(plan.frame_indices) * len(offsets), 3, frames, size, size), dtype=np.float32)
    for c, kept in enumerate(plan.frame_indices):
        for k, (y, x) in enumerate(offsets):
            for t, i in enumerate(kept):
                out[c * len(offsets) + k, :, t] = normed[i][:, y : y + size, x : x + size]
    return torch.from_numpy(out)


__all__ = ["ClipPlan", "VideoInputs", "clip_plan", "read_frames", "video_inputs"]
