"""Audio decoding (PyAV) and ImageBind's audio inputs (load_and_transform_audio_data).

Pipeline per file: decode every channel at the native rate to float32 → resample each channel
to 16 kHz → constant-clips-per-video sampler on duration = samples / 16000 → per clip: slice
[int(start·sr), int(end·sr)), subtract the clip's scalar mean (all channels), Kaldi filterbank of
channel 0, transpose, pad/cut to 204 frames, normalise.

Only the clip windows are resampled (each output sample depends on a bounded input window, so
the values are those of resampling the whole track); for a 200 s track that is 6 s of work.

Upstream quirk (reference README, Behaviour 2): the mean is subtracted in place on a view of
the shared 16 kHz waveform, so overlapping clips (audio shorter than clips × clip length) see
the shifts of earlier clips. `AudioSettings.reference_overlap_quirk` keeps that behaviour (the
pretrained encoder saw it); turning it off processes every clip on its own copy.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
import torch
from torch import Tensor

from mvbind.errors import MediaError, NoStreamError, reason
from mvbind.pipeline.config.schema import AudioSettings
from mvbind.pipeline.encoders.imagebind.fbank import melspec
from mvbind.pipeline.encoders.imagebind.resample import resample_span, resampled_length
from mvbind.pipeline.media.sampler import clip_spans


@dataclass(frozen=True)
class AudioInputs:
    """ImageBind audio inputs of one file, plus where they came from."""

    melspec: Tensor  # (clips, 1, num_mel_bins, target_length) float32
    duration: float  # resampled samples / sample_rate, seconds
    clips: list[tuple[float, float]]  # [start, end) seconds
    sample_ranges: list[tuple[int, int]]  # [start, end) into the resampled waveform (clamped)
    source_sample_rate: int
    source_channels: int
    source_num_samples: int


def audio_inputs(path: str | os.PathLike[str], settings: AudioSettings = AudioSettings()) -> AudioInputs:
    """Decode `path` and build its ImageBind audio inputs. Raises MediaError / NoStreamError."""
    waveform, rate = decode_audio(path)
    return waveform_inputs(waveform, rate, settings)


def waveform_inputs(waveform: Tensor, sample_rate: int, settings: AudioSettings = AudioSettings()) -> AudioInputs:
    """ImageBind audio inputs of a decoded waveform (C, N) at `sample_rate`; `waveform` is not modified."""
    if waveform.dim() != 2:
        raise ValueError(f"waveform must be (channels, samples), got shape {tuple(waveform.shape)}")
    channels, n = waveform.shape
    if n == 0:
        raise MediaError("audio stream is empty")
    sr = settings.sample_rate
    n16 = resampled_length(n, sample_rate, sr)
    frame_size = int(sr * settings.frame_length_ms * 0.001)
    if n16 < frame_size:
        raise MediaError(f"audio stream too short: {n16} samples at {sr} Hz, need {frame_size} for one frame")
    duration = n16 / sr

    spans = clip_spans(duration, settings.clip_duration, settings.clips_per_video)
    # Fraction * int is exact; int() truncates as upstream's slice bounds do; slicing clamps to n16.
    ranges = [(min(int(s * sr), n16), min(int(e * sr), n16)) for s, e in spans]

    # Resample each group of overlapping clips once into its own buffer, so overlapping clips are
    # views of one tensor (what the in-place quirk needs) and nothing else gets resampled.
    views: list[Tensor] = [waveform] * len(ranges)
    for lo, hi, members in _overlap_groups(ranges):
        buffer = resample_span(waveform, sample_rate, sr, lo, hi)
        if sample_rate == sr:
            buffer = buffer.clone()  # a view of the caller's waveform: never write into it
        for i in members:
            a, b = ranges[i]
            views[i] = buffer[:, a - lo : b - lo]

    quirk = settings.reference_overlap_quirk
    specs = []
    for clip in views:
        if quirk:
            clip -= clip.mean()  # in place, as upstream: later overlapping clips see this shift
        spec = melspec(
            clip,
            sample_frequency=sr,
            num_mel_bins=settings.num_mel_bins,
            target_length=settings.target_length,
            mean=settings.mean,
            std=settings.std,
            frame_length=settings.frame_length_ms,
            frame_shift=settings.frame_shift_ms,
            subtract_mean=not quirk,  # without the quirk: on a copy
        )
        specs.append(spec)
    return AudioInputs(
        melspec=torch.stack(specs).unsqueeze(1),
        duration=duration,
        clips=[(float(s), float(e)) for s, e in spans],
        sample_ranges=ranges,
        source_sample_rate=int(sample_rate),
        source_channels=int(channels),
        source_num_samples=int(n),
    )


def _overlap_groups(ranges: list[tuple[int, int]]) -> list[tuple[int, int, list[int]]]:
    """Merge [a, b) ranges that overlap into (lo, hi, member indices), in order of lo."""
    groups: list[tuple[int, int, list[int]]] = []
    for i in sorted(range(len(ranges)), key=lambda k: ranges[k]):
        a, b = ranges[i]
        if groups and a < groups[-1][1]:
            lo, hi, members = groups[-1]
            groups[-1] = (lo, max(hi, b), [*members, i])
        else:
            groups.append((a, b, [i]))
    return groups


# ── decoding ────────────────────────────────────────────────────────────────────────────────

_MAX_DEMUX_FAILURES = 32  # give up after this many demuxer errors in a row

# Integer sample formats → (offset, scale) mapping them to [-1, 1) as FFmpeg's swresample does.
_INT_SCALE = {
    np.dtype(np.uint8): (128.0, 1.0 / 128),
    np.dtype(np.int16): (0.0, 1.0 / 32768),
    np.dtype(np.int32): (0.0, 1.0 / 2147483648),
}


def decode_audio(path: str | os.PathLike[str]) -> tuple[Tensor, int]:
    """All channels of the best audio stream at its native rate: ((C, N) float32, sample rate).

    Like torchaudio.load / TorchCodec: float32 in [-1, 1], integer formats scaled by 2^(bits-1).
    Corrupt packets are skipped and a truncated file gives what could be decoded.
    Raises NoStreamError("no audio stream") or MediaError with a one-line reason.
    """
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            raise MediaError("file is empty (0 bytes)")
    except OSError as err:
        raise MediaError(f"cannot read file: {reason(err)}") from err
    try:
        container = av.open(str(path), mode="r")
    except (av.FFmpegError, OSError, ValueError) as err:
        raise MediaError(f"cannot open media: {reason(err)}") from err
    with container:
        stream = container.streams.best("audio")
        if stream is None:
            raise NoStreamError("no audio stream")
        chunks, rate, error = _decode_stream(container, stream)
    if not chunks:
        if error is not None:
            raise MediaError(f"audio not decodable: {reason(error)}")
        raise MediaError("audio stream is empty")
    waveform = np.concatenate(chunks, axis=1) if len(chunks) > 1 else chunks[0]
    if waveform.shape[1] == 0:
        raise MediaError("audio stream is empty")
    return torch.from_numpy(np.ascontiguousarray(waveform)), rate


def _decode_stream(
    container: av.container.InputContainer, stream: av.AudioStream
) -> tuple[list[np.ndarray], int, Exception | None]:
    """Decode `stream` to float32 (C, n) chunks; returns (chunks, rate, last error or None)."""
    chunks: list[np.ndarray] = []
    rate = channels = 0
    error: Exception | None = None
    converter = None
    failures = 0  # consecutive demuxer errors without a packet in between
    while True:
        try:
            for packet in container.demux(stream):
                failures = 0
                try:
                    frames = packet.decode()
                except av.FFmpegError as err:  # a corrupt packet: skip it, as ffmpeg does
                    error = err
                    continue
                for frame in frames:
                    if not rate:
                        rate, channels = frame.sample_rate, frame.layout.nb_channels
                    if frame.sample_rate != rate or frame.layout.nb_channels != channels:
                        raise MediaError(
                            f"audio format changes mid-stream ({rate} Hz {channels} ch → "
                            f"{frame.sample_rate} Hz {frame.layout.nb_channels} ch)"
                        )
                    array, converter = _frame_to_float32(frame, converter)
                    chunks.append(array)
            return chunks, rate, error
        except av.EOFError as err:  # truncated: keep what was decoded
            return chunks, rate, error or err
        except av.FFmpegError as err:  # a damaged packet in the container: read on, as ffmpeg does
            error = err
            failures += 1
            if failures >= _MAX_DEMUX_FAILURES:
                return chunks, rate, error


def _frame_to_float32(
    frame: av.AudioFrame, converter: av.AudioResampler | None
) -> tuple[np.ndarray, av.AudioResampler | None]:
    """(C, n) float32 samples of one frame; `converter` handles formats numpy can't read."""
    channels = frame.layout.nb_channels
    try:
        array = frame.to_ndarray()
    except ValueError:  # e.g. s64: let swresample convert to planar float (no rate change)
        if converter is None:
            converter = av.AudioResampler(format="fltp", layout=frame.layout, rate=frame.sample_rate)
        out = [f.to_ndarray() for f in converter.resample(frame)]
        array = np.concatenate(out, axis=1) if out else np.zeros((channels, 0), np.float32)
        return array.astype(np.float32, copy=False), converter
    if not frame.format.is_planar:
        array = array.reshape(-1, channels).T  # interleaved → (C, n)
    if array.dtype in _INT_SCALE:
        offset, scale = _INT_SCALE[array.dtype]
        array = array.astype(np.float32)
        if offset:
            array -= offset
        array *= scale
    else:
        array = array.astype(np.float32, copy=False)
    return array, converter

