"""The one selective video decoder (PyAV): only the frames asked for, by decord frame number.

decord's frame index (video packets sorted by pts), its average fps, and per-frame seeking from the
keyframe before each wanted frame (non-reference frames skipped where the codec allows); files with
unusable timestamps are decoded sequentially. Pictures come back as uint8 (H, W, 3) RGB, rotated
upright per the display matrix, at the stream's first resolution, optionally downscaled (area
interpolation) so the long side is at most `max_side`. Every encoder's frames come from here.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np

from mvbind.errors import MediaError, NoStreamError, reason

# Decoders known to honour AVCodecContext.skip_frame per packet (verified against full decoding).
_SKIP_NONREF_CODECS = frozenset({"h264", "hevc", "mpeg1video", "mpeg2video", "mpeg4", "vp8", "vp9"})


@dataclass
class DecodedVideo:
    """What `decode_video` read: the stream's frame count and average fps, and the frames asked for."""

    count: int  # decord's frame count: video packets
    fps: float  # decord's get_avg_fps
    frames: dict[int, np.ndarray]  # frame number -> uint8 (H, W, 3) RGB

    @property
    def duration(self) -> float:
        return self.count / self.fps


def decode_video(path: str | Path, choose: Callable[[int, float], Iterable[int]], *, threads: int = 0,
                 max_side: int | None = None) -> DecodedVideo:
    """Open `path`, let `choose(count, fps)` pick frame numbers, decode just those.

    `threads`: decoder threads (0 = FFmpeg's choice; the result does not depend on it).
    `max_side`: downscale (never upscale) so the long side is at most this many pixels.
    Raises NoStreamError without a video stream, MediaError (one line) when the file can't be used.
    """
    path = Path(path)
    try:
        with _open(path) as container:
            stream = _video_stream(container)
            index = _FrameIndex.build(container, stream)
            fps = _average_fps(stream, index)
            wanted = sorted(set(choose(index.count, fps)))
            if wanted and not 0 <= wanted[0] <= wanted[-1] < index.count:
                raise ValueError(f"frame numbers must be in [0, {index.count}), got {wanted[0]}..{wanted[-1]}")
            frames = _Decoder(path, container, stream, index, threads, max_side).frames(wanted)
            return DecodedVideo(index.count, fps, frames)
    except MediaError:
        raise
    except av.FFmpegError as err:
        raise MediaError(reason(err)) from err
    except (OSError, EOFError) as err:
        raise MediaError(reason(err)) from err


def read_frames(path: str | Path, frame_numbers: list[int], *, threads: int = 0) -> dict[int, np.ndarray]:
    """uint8 (H, W, 3) RGB frames by decord frame number, decoded selectively (for checks and tools)."""
    return decode_video(path, lambda count, fps: frame_numbers, threads=threads).frames


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


class _Decoder:
    """Decode a sorted list of frame numbers to uint8 RGB arrays, seeking keyframe to keyframe."""

    def __init__(self, path: Path, container, stream, index: _FrameIndex, threads: int,
                 max_side: int | None = None) -> None:
        self.path = path
        self.container = container
        self.stream = stream
        self.index = index
        self.threads = threads
        self.max_side = max_side
        self.skip_nonref = stream.codec_context.name in _SKIP_NONREF_CODECS
        ctx = stream.codec_context  # (width, height) every picture is converted to: the stream's
        self.size = self._target(ctx.width, ctx.height) if ctx.width > 0 and ctx.height > 0 else None
        self._configure(stream)

    def _target(self, width: int, height: int) -> tuple[int, int]:
        if not self.max_side or max(width, height) <= self.max_side:
            return width, height
        scale = self.max_side / max(width, height)
        return max(8, int(round(width * scale))), max(8, int(round(height * scale)))

    def _rgb(self, frame: av.VideoFrame) -> np.ndarray:
        if self.size is None:
            self.size = self._target(frame.width, frame.height)
        return _to_rgb(frame, self.size, "AREA" if self.max_side else None)

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


def _to_rgb(frame: av.VideoFrame, size: tuple[int, int] | None = None, interpolation: str | None = None
            ) -> np.ndarray:
    """uint8 (H, W, 3) RGB of a decoded frame, scaled to `size` = (width, height) (the stream's first
    picture, as decord does after a mid-stream resolution change, or a downscale), then rotated
    upright per its display matrix."""
    try:
        if size is None or (frame.width, frame.height) == size:
            rgb = frame.to_ndarray(format="rgb24")
        elif interpolation:
            rgb = frame.to_ndarray(format="rgb24", width=size[0], height=size[1], interpolation=interpolation)
        else:
            rgb = frame.to_ndarray(format="rgb24", width=size[0], height=size[1])
    except (ValueError, av.FFmpegError) as err:
        raise MediaError(f"cannot convert {frame.format.name} pictures to RGB") from err
    turns = int(round((frame.rotation or 0) / 90)) % 4
    return np.ascontiguousarray(np.rot90(rgb, turns)) if turns else rgb
