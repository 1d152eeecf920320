"""An independent float64 Kaldi filterbank and an error model for float32 implementations of it.

Why an error model: a float32 filterbank (torchaudio's or ours) differs from the exact result by
rounding in the pre-processing, the FFT and the mel matrix product. Those errors are bounded
*relative to the frame's energy*, not to each output bin, so a bin whose energy is tiny compared
with its frame (the quiet bins of a pure tone, anything near the log floor) can be off by a large
*relative* amount, and by how much depends on the CPU's FFT code path (MKL's AVX2 and AVX-512
kernels round differently). A fixed tolerance in the log domain is therefore either too loose
for loud bins or fails on quiet ones on some machines. Here every (frame, bin) gets a bound in
the power domain derived from the arithmetic, valid on any code path, and tight where the signal
is: a wrong window, pre-emphasis coefficient or mel edge moves loud bins by 1e-3 .. 1 relative,
far above their bound (~1e-5 relative), so `tests/test_fbank.py` plants those bugs and checks
that they are caught.

The reference is written from the Kaldi definitions (reference README, "Kaldi settings"), in
numpy float64, sharing no code with `pipeline.fbank`.

Error model for one frame, with u = 2**-24 (float32 unit round-off), x the raw 400-sample
frame, X the 512-point spectrum of the processed frame (DC removal, pre-emphasis, Hann):
- pre-processing (mean, subtraction, pre-emphasis, window: a few roundings per sample, each
  relative to |x|) perturbs the processed frame by at most C_PRE·u·||x||₂;
- a radix-2/mixed-radix FFT has ||ΔX||₂ ≤ C_FFT·log2(n)·u·||X||₂, and ||X||₂ = √n ||y||₂ ≤
  √n·(1 + 0.97)·||x||₂ (pre-emphasis gain ≤ 1.97, window ≤ 1). The input error enters the
  spectrum through the same √n. So every bin is off by at most
      δ = u·√n·||x||₂·(C_PRE + 1.97·C_FFT·log2 n)   (+ √n·||Δinput||₂ for a perturbed input);
- power: |Δ|X_k|²| ≤ 2|X_k|δ + δ²;
- mel weights built in float32 (as torchaudio does): each weight is off by at most
  C_BANK·u·mel_high/Δmel (rounding of mel values near mel_high, divided by the bin width);
- the mel matrix product: ≤ 257·u relative (worst-case dot-product bound);
- the float32 log and its storage: ≤ 2 ulps of the log value, relative in the power domain.
The constants C_PRE = 8, C_FFT = 2, C_BANK = 8 are generous for each step's operation count;
the bound is a worst case, and observed errors sit one to three orders of magnitude below it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

U = 2.0**-24  # float32 unit round-off
EPS32 = float(np.finfo(np.float32).eps)  # the log floor
SR, FRAME, SHIFT, NFFT, BINS = 16000, 400, 160, 512, 128
LOW_HZ, HIGH_HZ = 20.0, 8000.0
PREEMPH = 0.97
C_PRE, C_FFT, C_BANK = 8.0, 2.0, 8.0


def _mel(f):
    return 1127.0 * np.log(1.0 + np.asarray(f, dtype=np.float64) / 700.0)


def mel_banks() -> np.ndarray:
    """(128, 257) triangular weights on the Kaldi mel scale, 20 Hz .. 8 kHz; the Nyquist column is 0."""
    lo, hi = _mel(LOW_HZ), _mel(HIGH_HZ)
    delta = (hi - lo) / (BINS + 1)
    left = lo + np.arange(BINS)[:, None] * delta
    centre, right = left + delta, left + 2 * delta
    m = _mel(np.arange(NFFT // 2) * SR / NFFT)[None, :]
    w = np.maximum(0.0, np.minimum((m - left) / (centre - left), (right - m) / (right - centre)))
    return np.pad(w, ((0, 0), (0, 1)))


@dataclass(frozen=True)
class Reference:
    mel: np.ndarray  # (frames, 128) float64 mel energies, before the floor
    bound: np.ndarray  # (frames, 128) bound on |float32 implementation − mel| (power domain)

    @property
    def floored(self) -> np.ndarray:
        return np.maximum(self.mel, EPS32)


def reference_fbank(signal: np.ndarray, input_error: np.ndarray | None = None) -> Reference:
    """The filterbank of a 1-D signal (already mean-subtracted as the caller's pipeline does).

    `input_error`: an optional per-sample bound on how far the implementation's input may be from
    `signal` (e.g. a resampled waveform from another resampler); it is folded into δ per frame.
    """
    x = np.asarray(signal, dtype=np.float64)
    count = 1 + (x.size - FRAME) // SHIFT
    index = np.arange(FRAME)[None, :] + SHIFT * np.arange(count)[:, None]
    raw = x[index]
    y = raw - raw.mean(axis=1, keepdims=True)
    y = y - PREEMPH * np.concatenate([y[:, :1], y[:, :-1]], axis=1)
    y = y * (0.5 - 0.5 * np.cos(2 * math.pi * np.arange(FRAME) / (FRAME - 1)))
    spectrum = np.abs(np.fft.rfft(y, n=NFFT, axis=1))  # (frames, 257)
    banks = mel_banks()
    mel = (spectrum**2) @ banks.T

    root_n = math.sqrt(NFFT)
    raw_norm = np.linalg.norm(raw, axis=1, keepdims=True)
    delta = U * root_n * raw_norm * (C_PRE + 1.97 * C_FFT * math.log2(NFFT))
    if input_error is not None:
        e = np.asarray(input_error, dtype=np.float64)
        delta = delta + root_n * 1.97 * np.linalg.norm(e[index], axis=1, keepdims=True)
    power_err = 2 * spectrum * delta + delta**2  # (frames, 257)
    support = (banks > 0).astype(np.float64)
    support[:, 1:] += banks[:, :-1] > 0  # a weight may round away from 0 one bin outside
    support[:, :-1] += banks[:, 1:] > 0
    support = np.minimum(support, 1.0)
    bank_err = C_BANK * U * _mel(HIGH_HZ) / ((_mel(HIGH_HZ) - _mel(LOW_HZ)) / (BINS + 1))
    bound = power_err @ banks.T + bank_err * ((spectrum**2 + power_err) @ support.T) + 257 * U * mel
    return Reference(mel=mel, bound=bound)


def log_error_ratio(log_mel: np.ndarray, ref: Reference, *, log_abs_err: np.ndarray | float = 0.0) -> float:
    """Worst |exp(log_mel) − max(mel, eps)| / bound over all cells (≤ 1: within the error model).

    `log_mel` is a float32 implementation's log filterbank; `log_abs_err` is any extra absolute
    error in the log domain (e.g. undoing a normalisation); 2 ulps of the float32 log are added.
    """
    got = np.asarray(log_mel, dtype=np.float64)
    ulp = np.spacing(np.abs(got).astype(np.float32)).astype(np.float64)
    want = ref.floored
    tol_log = 2 * ulp + log_abs_err
    bound = ref.bound + np.expm1(tol_log) * np.maximum(want, np.exp(got))
    return float((np.abs(np.exp(got) - want) / bound).max())


def melspec_to_log(spec: np.ndarray, frames: int, mean: float, std: float) -> tuple[np.ndarray, np.ndarray]:
    """Undo ImageBind's (log − mean) / std on the first `frames` columns: (log (frames, 128), its error).

    The float32 normalisation rounds twice: (x − mean) and the division; undoing it in float64 is
    exact, so the log is known to within ulp(x − mean) + std·ulp(spec).
    """
    s = np.asarray(spec, dtype=np.float32)[:, :frames].T
    log = s.astype(np.float64) * np.float64(np.float32(std)) + np.float64(np.float32(mean))
    err = np.spacing(np.abs(log).astype(np.float32)).astype(np.float64) + float(np.float32(std)) * np.spacing(
        np.abs(s)
    ).astype(np.float64)
    return log, err


def reference_clips(waveform: np.ndarray, ranges, *, quirk: bool, input_error: np.ndarray | None = None) -> list:
    """ImageBind's per-clip filterbanks of a 16 kHz waveform (C, N) in float64, one `Reference` per clip.

    Each clip subtracts its scalar mean over all channels; with `quirk` in place on the shared
    waveform (upstream's views), so a later overlapping clip starts with earlier shifts applied.
    `input_error` bounds, per sample, how far the implementation's waveform may be from this one
    (channel 0), plus the same again for the mean it subtracts.
    """
    w = np.array(waveform, dtype=np.float64)
    out = []
    for a, b in ranges:
        clip = w[:, a:b] if quirk else w[:, a:b].copy()
        clip -= clip.mean()  # numpy slices are views: with `quirk` this writes into `w`
        err = None
        if input_error is not None:
            e = np.asarray(input_error, dtype=np.float64)
            err = e[a:b] + e.max()
        out.append(reference_fbank(clip[0], err))
    return out


def melspec_ratios(spec: np.ndarray, refs: list, mean: float = -4.268, std: float = 9.138) -> list[float]:
    """Per clip: worst error / bound of a (clips, 1, 128, 204) ImageBind audio input against `refs`."""
    spec = np.asarray(spec).reshape(len(refs), BINS, -1)
    ratios = []
    for s, ref in zip(spec, refs):
        log, err = melspec_to_log(s, ref.mel.shape[0], mean, std)
        ratios.append(log_error_ratio(log, ref, log_abs_err=err))
    return ratios
