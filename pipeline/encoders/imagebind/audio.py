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

import torch
from torch import Tensor

from mvbind.errors import MediaError
from mvbind.pipeline.config.schema import AudioSettings
from mvbind.pipeline.encoders.imagebind.fbank import melspec
from mvbind.pipeline.encoders.imagebind.resample import resample_span, resampled_length
from mvbind.pipeline.media.audio import decode_audio
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
    clips = clip_waves(waveform, sample_rate, settings)
    specs = [clip_melspec(w, settings) for w in clips.waves]
    return AudioInputs(
        melspec=torch.stack(specs).unsqueeze(1),
        duration=clips.duration,
        clips=clips.spans,
        sample_ranges=clips.ranges,
        source_sample_rate=int(sample_rate),
        source_channels=int(waveform.shape[0]),
        source_num_samples=int(waveform.shape[1]),
    )


@dataclass(frozen=True)
class ClipWaves:
    """Each clip's 16 kHz waveform as the filterbank reads it: channel 0 after the clip's mean
    (over all channels) was subtracted, with the overlap quirk's shifts when it is on."""

    waves: list[Tensor]  # (samples,) float32 per clip
    duration: float
    spans: list[tuple[float, float]]
    ranges: list[tuple[int, int]]


def clip_waves(waveform: Tensor, sample_rate: int, settings: AudioSettings = AudioSettings()) -> ClipWaves:
    """The clips' waveforms of a decoded waveform (C, N) at `sample_rate` (not modified)."""
    if waveform.dim() != 2:
        raise ValueError(f"waveform must be (channels, samples), got shape {tuple(waveform.shape)}")
    n = waveform.shape[1]
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

    waves = []
    for clip in views:
        if settings.reference_overlap_quirk:
            clip -= clip.mean()  # in place, as upstream: later overlapping clips see this shift
            waves.append(clip[0].clone())  # as the filterbank read it, before later clips shift it
        else:
            waves.append((clip - clip.mean())[0])  # on a copy
    return ClipWaves(waves, duration, [(float(s), float(e)) for s, e in spans], ranges)


def clip_melspec(wave: Tensor, settings: AudioSettings) -> Tensor:
    """ImageBind's (mel, frames) input of one clip wave from `clip_waves` (on the wave's device)."""
    return melspec(
        wave.unsqueeze(0),
        sample_frequency=settings.sample_rate,
        num_mel_bins=settings.num_mel_bins,
        target_length=settings.target_length,
        mean=settings.mean,
        std=settings.std,
        frame_length=settings.frame_length_ms,
        frame_shift=settings.frame_shift_ms,
        subtract_mean=False,  # clip_waves did
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









