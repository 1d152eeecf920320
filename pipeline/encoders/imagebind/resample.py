"""Band-limited resampling equal to torchaudio.functional.resample's default.

Windowed-sinc interpolation with a Hann window (``sinc_interp_hann``), lowpass filter width 6,
rolloff 0.99, rates reduced by their gcd. torchaudio builds the kernel in the waveform's dtype
(float32 for decoded audio), convolves with stride ``orig`` and keeps
``ceil(new * N / orig)`` output samples. We follow the same arithmetic so results agree to
float32 rounding, without depending on torchaudio (which has no build for our torch).

`resample_span` computes only a slice of that output: each output sample depends on a bounded
input window, so a 2 s clip of a 200 s track costs 2 s of work, and the values are those of
the full resample.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch
from torch import Tensor

LOWPASS_FILTER_WIDTH = 6
ROLLOFF = 0.99


def resampled_length(num_samples: int, orig_freq: int, new_freq: int) -> int:
    """Number of samples `resample` returns for `num_samples` inputs (torchaudio's rule)."""
    _check_rates(orig_freq, new_freq)
    if orig_freq == new_freq:
        return num_samples
    g = math.gcd(orig_freq, new_freq)
    orig, new = orig_freq // g, new_freq // g
    # torchaudio: ceil(new * length / orig) evaluated in float64.
    return math.ceil(new * num_samples / orig)


def resample(waveform: Tensor, orig_freq: int, new_freq: int) -> Tensor:
    """Resample the last dimension of `waveform` (..., N) from `orig_freq` to `new_freq` Hz.

    Returns `waveform` itself when the rates are equal (as torchaudio does).
    """
    _check_rates(orig_freq, new_freq)
    if orig_freq == new_freq:
        return waveform
    n = waveform.shape[-1]
    return resample_span(waveform, orig_freq, new_freq, 0, resampled_length(n, orig_freq, new_freq))


def resample_span(waveform: Tensor, orig_freq: int, new_freq: int, start: int, stop: int) -> Tensor:
    """Output samples [start, stop) of ``resample(waveform, orig_freq, new_freq)``, computed alone.

    `start`/`stop` are clamped to the full output length. Equal rates give a slice (a view).
    """
    _check_rates(orig_freq, new_freq)
    if not waveform.is_floating_point():
        raise TypeError(f"resample needs a floating-point waveform, got {waveform.dtype}")
    n = waveform.shape[-1]
    total = resampled_length(n, orig_freq, new_freq)
    start, stop = max(0, start), min(stop, total)
    if orig_freq == new_freq:
        return waveform[..., start:stop]
    lead = waveform.shape[:-1]
    if stop <= start:
        return waveform.new_zeros((*lead, 0))

    g = math.gcd(orig_freq, new_freq)
    orig, new = orig_freq // g, new_freq // g
    kernel, width = _kernel(orig, new, waveform.dtype)
    kernel = kernel.to(waveform.device)

    # Output sample j = new * b + p comes from phase p of block b; block b reads the zero-padded
    # input [b * orig, b * orig + 2 * width + orig), i.e. unpadded [b * orig - width, ...).
    first_block, last_block = start // new, (stop - 1) // new
    lo = first_block * orig - width
    hi = last_block * orig - width + kernel.shape[-1]
    flat = waveform.reshape(-1, n)
    src = flat[:, max(lo, 0) : min(hi, n)]
    src = torch.nn.functional.pad(src, (max(0, -lo), max(0, hi - n)))
    out = torch.nn.functional.conv1d(src[:, None], kernel, stride=orig)  # (rows, new, blocks)
    out = out.transpose(1, 2).reshape(flat.shape[0], -1)
    offset = first_block * new
    return out[:, start - offset : stop - offset].reshape(*lead, stop - start)


def _check_rates(orig_freq: int, new_freq: int) -> None:
    if int(orig_freq) != orig_freq or int(new_freq) != new_freq:
        raise ValueError(f"sample rates must be integers, got {orig_freq} and {new_freq}")
    if orig_freq <= 0 or new_freq <= 0:
        raise ValueError(f"sample rates must be positive, got {orig_freq} and {new_freq}")


@lru_cache(maxsize=16)
def _kernel(orig: int, new: int, dtype: torch.dtype) -> tuple[Tensor, int]:
    """Polyphase windowed-sinc filters (new, 1, 2 * width + orig) for gcd-reduced rates.

    Built in `dtype`, as torchaudio.functional.resample does (it passes the waveform's dtype).
    """
    base_freq = min(orig, new) * ROLLOFF
    width = math.ceil(LOWPASS_FILTER_WIDTH * orig / base_freq)
    # Time of each input tap relative to each output phase, in units of the cutoff period.
    taps = torch.arange(-width, width + orig, dtype=dtype)[None, None] / orig
    t = torch.arange(0, -new, -1, dtype=dtype)[:, None, None] / new + taps
    t *= base_freq
    t = t.clamp_(-LOWPASS_FILTER_WIDTH, LOWPASS_FILTER_WIDTH)
    window = torch.cos(t * math.pi / LOWPASS_FILTER_WIDTH / 2) ** 2
    t *= math.pi
    sinc = torch.where(t == 0, torch.tensor(1.0, dtype=dtype), t.sin() / t)
    kernel = sinc * (window * (base_freq / orig))
    return kernel, width
