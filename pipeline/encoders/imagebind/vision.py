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

import bisect
import functools
import math
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch

from mvbind.errors import MediaError, NoStreamError, reason
from mvbind.pipeline.config.schema import VideoSettings
from mvbind.pipeline.media.borders import Box, crop, detect_content_box
from mvbind.pipeline.media.sampler import clip_spans

# Decoders known to honour AVCodecContext.skip_frame per packet (verified against full decoding).
_SKIP_NONREF_CODECS = frozenset({"h264", "hevc", "mpeg1video", "mpeg2video", "mpeg4", "vp8", "vp9"})




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
    settings = settings or VideoSettings()
    try:
        return _video_inputs(Path(path), settings, threads)
    except MediaError:
        raise
    except av.FFmpegError as err:
        raise MediaError(reason(err)) from err
    except (OSError, EOFError) as err:
        raise MediaError(reason(err)) from err


def read_frames(path: str | Path, frame_numbers: list[int], *, threads: int = 0) -> dict[int, np.ndarray]:
    """uint8 (H, W, 3) RGB frames by decord frame number, decoded selectively (for checks and tools)."""
    path = Path(path)
    try:
        with _open(path) as container:
            stream = _video_stream(container)
            index = _FrameIndex.build(container, stream)
            wanted = sorted(set(frame_numbers))
            if wanted and not 0 <= wanted[0] <= wanted[-1] < index.count:
                raise ValueError(f"frame numbers must be in [0, {index.count}), got {wanted[0]}..{wanted[-1]}")
            return _Decoder(path, container, stream, index, threads).frames(wanted)
    except av.FFmpegError as err:
        raise MediaError(reason(err)) from err


def _video_inputs(path: Path, settings: VideoSettings, threads: int) -> VideoInputs:
    with _open(path) as container:
        stream = _video_stream(container)
        index = _FrameIndex.build(container, stream)
        fps = _average_fps(stream, index)
        plan = clip_plan(index.count, fps, settings)
        needed = sorted({i for kept in plan.frame_indices for i in kept})
        probes: list[int] = []
        if settings.remove_borders and len(needed) < settings.border_probe_frames:
            spread = np.linspace(0, index.count - 1, settings.border_probe_frames).round().astype(int)
            probes = sorted(set(spread.tolist()) - set(needed))
        decoded = _Decoder(path, container, stream, index, threads).frames(sorted(set(needed) | set(probes)))

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
    resized = {i: _resize(crop(decoded[i], box) if box else decoded[i], settings.size) for i in needed}
    frames = _clips_and_crops(resized, plan, settings)
    return VideoInputs(frames, index.count / fps, fps, index.count, box, width, height, plan)


# ---------------------------------------------------------------------------------------------
# Container, stream, index


def _open(path: Path) -> av.container.InputContainer:
    if not path.is_file():
        raise MediaError("file not found" if not path.exists() else "not a regular file")
    if path.stat().st_size == 0:
        raise MediaError("empty file (0 bytes)")
    try:
        return av.open(str(path), mode="r")
    except av.FFmpegError as err:
        raise MediaError(f"cannot open: {reason(err)}") from err


def _video_stream(container: av.container.InputContainer) -> av.video.stream.VideoStream:
    """The first video stream that is a real video (not cover art)."""
    for stream in container.streams.video:
        if not stream.disposition & av.stream.Disposition.attached_pic:
            return stream
    raise NoStreamError("no video stream")


@dataclass
class _FrameIndex:
    """decord's frame index: video packets sorted by pts (frame number -> pts)."""

    count: int
    pts: list[int] | None  # sorted, unique; None when timestamps are unusable (decode sequentially)
    key_pts: list[int]  # sorted pts of keyframes

    @classmethod
    def build(cls, container: av.container.InputContainer, stream: av.video.stream.VideoStream) -> _FrameIndex:
        pts: list[int | None] = []
        keys: list[int] = []
        try:
            for packet in container.demux(stream):
                if packet.size == 0 and packet.pts is None and packet.dts is None:
                    continue  # PyAV's end-of-stream flush marker
                pts.append(packet.pts)
                if packet.is_keyframe and packet.pts is not None:
                    keys.append(packet.pts)
        except av.FFmpegError:
            pass  # truncated or damaged tail: keep the packets read so far (decord would fail)
        if not pts:
            raise MediaError("no video frames")
        usable = None not in pts and len(set(pts)) == len(pts)
        ordered = sorted(pts) if usable else None  # type: ignore[type-var]
        return cls(len(pts), ordered, sorted(keys) if usable else [])

    def keyframe_before(self, pts: int) -> int | None:
        """pts of the last keyframe at or before `pts` (None: decode from the start)."""
        i = bisect.bisect_right(self.key_pts, pts)
        return self.key_pts[i - 1] if i else None


def _average_fps(stream: av.video.stream.VideoStream, index: _FrameIndex) -> float:
    """The stream's average frame rate (decord's get_avg_fps), with fallbacks where it is unknown."""
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate and rate > 0:
            return float(rate)
    if index.pts and index.count > 1 and stream.time_base:
        span = float((index.pts[-1] - index.pts[0]) * stream.time_base)
        if span > 0:
            return (index.count - 1) / span
    return 1.0


# ---------------------------------------------------------------------------------------------
# Selective decoding


class _Decoder:
    """Decode a sorted list of frame numbers to uint8 RGB arrays, seeking keyframe to keyframe."""

    def __init__(self, path: Path, container, stream, index: _FrameIndex, threads: int) -> None:
        self.path = path
        self.container = container
        self.stream = stream
        self.index = index
        self.threads = threads
        self.skip_nonref = stream.codec_context.name in _SKIP_NONREF_CODECS
        ctx = stream.codec_context  # (width, height) every picture is converted to: the stream's
        self.size = (ctx.width, ctx.height) if ctx.width > 0 and ctx.height > 0 else None
        self._configure(stream)

    def _rgb(self, frame: av.VideoFrame) -> np.ndarray:
        if self.size is None:
            self.size = (frame.width, frame.height)
        return _to_rgb(frame, self.size)

    def _configure(self, stream) -> None:
        stream.thread_type = "AUTO"
        stream.thread_count = self.threads

    def frames(self, wanted: list[int]) -> dict[int, np.ndarray]:
        out: dict[int, np.ndarray] = {}
        if self.index.pts is not None:
            try:
                self._by_pts(wanted, out)
            except _FallBack:
                pass
        missing = [i for i in wanted if i not in out]
        if missing:
            self._sequential(missing, out)
        return out

    def _packets(self, seek_pts: int | None, targets: set[int]):
        """Decoded frames from the keyframe at/before `seek_pts` (None: from the start)."""
        ctx = self.stream.codec_context
        if seek_pts is not None:
            self.container.seek(seek_pts, stream=self.stream, backward=True, any_frame=False)
        else:
            self.container.seek(self.index.pts[0], stream=self.stream, backward=True, any_frame=False)
        for packet in self.container.demux(self.stream):
            if packet.size == 0 and (packet.pts is not None or packet.dts is not None):
                continue  # an empty (dropped-frame) packet would end the stream for the decoder
            if self.skip_nonref:
                ctx.skip_frame = "DEFAULT" if packet.pts is None or packet.pts in targets else "NONREF"
            try:
                yield from ctx.decode(packet)
            except av.FFmpegError:
                continue  # a damaged packet: conceal by going on
        ctx.skip_frame = "DEFAULT"

    def _by_pts(self, wanted: list[int], out: dict[int, np.ndarray]) -> None:
        pts_of = self.index.pts
        targets = {pts_of[i]: i for i in wanted}
        gen = None
        frontier = -math.inf  # largest pts decoded in the current pass
        pending = list(wanted)
        while pending:
            frame_no = pending.pop(0)
            if frame_no in out:
                continue
            target = pts_of[frame_no]
            key = self.index.keyframe_before(target)
            if gen is None or (key is not None and key > frontier):
                gen = self._packets(key, set(targets))
                frontier = -math.inf
                fresh = True
            previous = None
            for frame in gen:
                if frame.pts is None:
                    raise _FallBack
                if fresh and frame.pts > target:
                    raise _FallBack  # the seek landed after the frame we want
                fresh = False
                frontier = max(frontier, frame.pts)
                hit = targets.get(frame.pts)
                if hit is not None and hit not in out:
                    out[hit] = self._rgb(frame)
                if frame.pts >= target:
                    if frame_no not in out:  # the frame's packet gave no picture: nearest earlier one
                        out[frame_no] = self._rgb(previous if previous is not None else frame)
                    break
                previous = frame
            else:
                gen = None
                if frame_no not in out:
                    if previous is None:
                        raise _FallBack
                    out[frame_no] = self._rgb(previous)
            if len(out) == len(targets):
                return

    def _sequential(self, wanted: list[int], out: dict[int, np.ndarray]) -> None:
        """Decode from the start and count pictures (robust path for unusable timestamps)."""
        want = set(wanted)
        last = max(wanted)
        count = 0
        previous = None
        with av.open(str(self.path), mode="r") as container:
            stream = _video_stream(container)
            self._configure(stream)
            ctx = stream.codec_context
            try:
                for packet in container.demux(stream):
                    if packet.size == 0 and (packet.pts is not None or packet.dts is not None):
                        continue
                    try:
                        decoded = ctx.decode(packet)
                    except av.FFmpegError:
                        continue
                    for frame in decoded:
                        if count in want:
                            out[count] = self._rgb(frame)
                        previous = frame
                        count += 1
                    if count > last:
                        break
            except av.FFmpegError:
                pass  # damaged tail
            if previous is None:
                raise MediaError("no decodable video frames")
            tail = self._rgb(previous)
        for i in wanted:  # fewer pictures than packets: the last picture stands in
            out.setdefault(i, tail)


class _FallBack(Exception):
    """Timestamps cannot be trusted for this file: decode sequentially."""


def _to_rgb(frame: av.VideoFrame, size: tuple[int, int] | None = None) -> np.ndarray:
    """uint8 (H, W, 3) RGB of a decoded frame, scaled to `size` = (width, height) of the stream's
    first picture if a mid-stream resolution change made it differ (as decord does), then rotated
    upright per its display matrix."""
    try:
        if size is None or (frame.width, frame.height) == size:
            rgb = frame.to_ndarray(format="rgb24")
        else:
            rgb = frame.to_ndarray(format="rgb24", width=size[0], height=size[1])
    except (ValueError, av.FFmpegError) as err:
        raise MediaError(f"cannot convert {frame.format.name} pictures to RGB") from err
    turns = int(round((frame.rotation or 0) / 90)) % 4
    return np.ascontiguousarray(np.rot90(rgb, turns)) if turns else rgb


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


def _clips_and_crops(resized: dict[int, np.ndarray], plan: ClipPlan, settings: VideoSettings) -> torch.Tensor:
    """Normalise, stack clips (3, T, h, w) and take the spatial crops: (clips·crops, 3, T, s, s)."""
    mean = np.asarray(settings.mean, dtype=np.float32)[:, None, None]
    std = np.asarray(settings.std, dtype=np.float32)[:, None, None]
    normed = {i: (x - mean) / std for i, x in resized.items()}
    size = settings.size
    height, width = next(iter(normed.values())).shape[-2:]
    offsets = []
    for idx in (0, 1, 2) if settings.crops == 3 else (1,):  # ImageBind SpatialCrop / uniform_crop
        y = int(math.ceil((height - size) / 2))
        x = int(math.ceil((width - size) / 2))
        if height > width:
            y = 0 if idx == 0 else height - size if idx == 2 else y
        else:
            x = 0 if idx == 0 else width - size if idx == 2 else x
        offsets.append((y, x))
    frames = settings.frames_per_clip
    out = np.empty((len(plan.frame_indices) * len(offsets), 3, frames, size, size), dtype=np.float32)
    for c, kept in enumerate(plan.frame_indices):
        for k, (y, x) in enumerate(offsets):
            for t, i in enumerate(kept):
                out[c * len(offsets) + k, :, t] = normed[i][:, y : y + size, x : x + size]
    return torch.from_numpy(out)

