"""Kaldi log-mel filterbank (torchaudio.compliance.kaldi.fbank) and ImageBind's per-clip melspec.

Only the configuration ImageBind uses is implemented, with torchaudio's defaults for the rest:
snip_edges, per-frame DC removal, pre-emphasis 0.97, symmetric Hann window, FFT size rounded up
to a power of two, power spectrum, triangular bins on the Kaldi mel scale (1127 ln(1 + f/700))
from `low_freq` to Nyquist, natural log floored at float32 eps, no energy column, no dither.
The operations run in the same order and dtype as torchaudio's, so on the same FFT code path the
output is bit-identical to torchaudio's (e.g. `MKL_CBWR=COMPATIBLE`); across CPU code paths both
stay within the float32 error model of `tests/ref_fbank.py` (quiet bins near the log floor move
most, since FFT rounding is relative to the frame's energy, not to each bin).
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch
from torch import Tensor

FLOAT32_EPS = torch.finfo(torch.float32).eps
PREEMPHASIS = 0.97
MEL_MEAN = -4.268
MEL_STD = 9.138


def kaldi_fbank(
    waveform: Tensor,
    *,
    sample_frequency: int = 16000,
    num_mel_bins: int = 128,
    frame_length: float = 25.0,
    frame_shift: float = 10.0,
    low_freq: float = 20.0,
    high_freq: float = 0.0,
    channel: int = 0,
) -> Tensor:
    """Log-mel filterbank of one channel of `waveform` (C, N): shape (frames, num_mel_bins).

    frames = 1 + (N - window) // shift (snip_edges); `high_freq` <= 0 is an offset from Nyquist.
    """
    if waveform.dim() != 2:
        raise ValueError(f"waveform must be (channels, samples), got shape {tuple(waveform.shape)}")
    if not waveform.is_floating_point():
        raise TypeError(f"waveform must be floating point, got {waveform.dtype}")
    signal = waveform[channel]
    shift = int(sample_frequency * frame_shift * 0.001)
    size = int(sample_frequency * frame_length * 0.001)
    if not 2 <= size <= signal.shape[0]:
        raise ValueError(f"need at least {size} samples for one {frame_length} ms frame, got {signal.shape[0]}")
    if shift <= 0:
        raise ValueError(f"frame_shift must give at least one sample, got {frame_shift} ms")
    fft_size = 1 << (size - 1).bit_length()

    frames = signal.unfold(0, size, shift)  # (m, size), snip_edges
    frames = frames - frames.mean(dim=1, keepdim=True)
    previous = torch.cat((frames[:, :1], frames[:, :-1]), dim=1)  # x[j-1], x[-1] := x[0]
    frames = frames - PREEMPHASIS * previous
    frames = frames * _hann(size, frames.dtype, frames.device)
    frames = torch.nn.functional.pad(frames, (0, fft_size - size))

    power = torch.fft.rfft(frames).abs().pow(2.0)  # (m, fft_size // 2 + 1)
    banks = _mel_banks(num_mel_bins, fft_size, float(sample_frequency), low_freq, high_freq)
    mel = torch.mm(power, banks.to(device=power.device, dtype=power.dtype).T)
    return torch.clamp_min(mel, FLOAT32_EPS).log()


def pad_or_cut(fbank_t: Tensor, target_length: int) -> Tensor:
    """Zero-pad (right) or cut the last dimension of `fbank_t` (mel, frames) to `target_length`."""
    missing = target_length - fbank_t.shape[-1]
    if missing > 0:
        return torch.nn.functional.pad(fbank_t, (0, missing))
    return fbank_t[..., :target_length]


def melspec(
    waveform: Tensor,
    *,
    sample_frequency: int = 16000,
    num_mel_bins: int = 128,
    target_length: int = 204,
    mean: float = MEL_MEAN,
    std: float = MEL_STD,
    frame_length: float = 25.0,
    frame_shift: float = 10.0,
    subtract_mean: bool = True,
) -> Tensor:
    """ImageBind's audio input for one clip (C, N): (num_mel_bins, target_length), normalised.

    Subtracts the clip's scalar mean (over all channels) first unless `subtract_mean` is False
    (the caller already did, e.g. in place), takes the filterbank of channel 0, transposes,
    pads/cuts to `target_length` frames and applies (x - mean) / std.
    """
    if subtract_mean:
        waveform = waveform - waveform.mean()
    fbank = kaldi_fbank(
        waveform,
        sample_frequency=sample_frequency,
        num_mel_bins=num_mel_bins,
        frame_length=frame_length,
        frame_shift=frame_shift,
    )
    spec = pad_or_cut(fbank.T, target_length)
    # torchvision's Normalize: subtract then divide, with float32 mean/std.
    mean_t = torch.tensor(mean, dtype=spec.dtype, device=spec.device)
    std_t = torch.tensor(std, dtype=spec.dtype, device=spec.device)
    return (spec - mean_t) / std_t


@lru_cache(maxsize=8)
def _hann(size: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    return torch.hann_window(size, periodic=False, dtype=dtype, device=device)


def _kaldi_mel(freq: Tensor) -> Tensor:
    return 1127.0 * (1.0 + freq / 700.0).log()


@lru_cache(maxsize=8)
def _mel_banks(num_bins: int, fft_size: int, sample_freq: float, low_freq: float, high_freq: float) -> Tensor:
    """Triangular Kaldi mel filters (num_bins, fft_size // 2 + 1), float32; the Nyquist column is 0.

    Built in float32 like torchaudio's get_mel_banks (without VTLN warping).
    """
    if num_bins <= 3:
        raise ValueError(f"need more than 3 mel bins, got {num_bins}")
    nyquist = 0.5 * sample_freq
    if high_freq <= 0.0:
        high_freq += nyquist
    if not (0.0 <= low_freq < nyquist and 0.0 < high_freq <= nyquist and low_freq < high_freq):
        raise ValueError(f"bad mel range: low {low_freq} Hz, high {high_freq} Hz, nyquist {nyquist} Hz")
    mel_low = 1127.0 * math.log(1.0 + low_freq / 700.0)
    mel_high = 1127.0 * math.log(1.0 + high_freq / 700.0)
    delta = (mel_high - mel_low) / (num_bins + 1)

    index = torch.arange(num_bins).unsqueeze(1)  # int64; arithmetic with floats gives float32
    left = mel_low + index * delta
    center = mel_low + (index + 1.0) * delta
    right = mel_low + (index + 2.0) * delta
    fft_mel = _kaldi_mel((sample_freq / fft_size) * torch.arange(float(fft_size // 2))).unsqueeze(0)

    rising = (fft_mel - left) / (center - left)
    falling = (right - fft_mel) / (right - center)
    banks = torch.max(torch.zeros(1), torch.min(rising, falling))
    return torch.nn.functional.pad(banks, (0, 1))
