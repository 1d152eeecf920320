"""An independent float64 resampler (torchaudio's default) and error bounds for float32 ones.

torchaudio.functional.resample's default is band-limited interpolation with a Hann-windowed sinc:
output sample j (time j / new) is

    y[j] = sum_i x[i] · (b / orig) · sinc(v) · cos²(π v / 12),   v = b · (i / orig − j / new),

over the inputs with |v| < 6 (lowpass_filter_width 6; the window is 0 beyond), x = 0 outside the
signal, b = 0.99 · min(orig, new) (rolloff 0.99) and ceil(new · N / orig) outputs for N inputs
(rates reduced by their gcd). Written here directly from that formula in numpy float64, sharing
no code with `pipeline.resample` (which follows torchaudio's polyphase float32 arithmetic).

Error model for a float32 implementation of torchaudio's arithmetic, u = 2**-24:
- the sum: a length-n sum in any order is within n·u·Σ|k_i x_i| of the exact sum of its terms
  (Higham, "Accuracy and Stability of Numerical Algorithms", 3.1), n = the taps with |v| < 6
  (the other taps of the polyphase kernel are ~1e-22 and add nothing);
- the taps: torchaudio computes v as ((−p / new) + (i / orig)) · b in float32, which rounds
  terms of size ~1 before multiplying by b, so v is off by up to dv = u · (2 b (1 + 1 + w / orig)
  + 2 · 6) (w the polyphase half-width). A tap's slope |dk/dv| ≤ (b / orig) (π · 0.4362 + π / 12)
  (max |sinc'| and max |d cos²/dv|), so each tap is off by up to (b / orig) · (1.63 dv + 16 u)
  (16 u for the sin, cos, squares and products).
`exact_bound` adds both. Two float32 implementations that do torchaudio's arithmetic (ours and
torchaudio itself) build v with the same correctly rounded IEEE operations, so their v agree
bit for bit; only sin/cos differ (≤ 1 ulp each from the exact value), which leaves ≤ 12 u
relative per tap between them. `twin_bound` is that plus both sums: (2n + 12)·u·Σ|k_i x_i|.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

U = 2.0**-24
WIDTH = 6  # lowpass_filter_width
ROLLOFF = 0.99


@dataclass
class Reference:
    y: np.ndarray  # (..., J) float64 output
    magnitude: np.ndarray  # (..., J) Σ |k_i x_i|
    support: np.ndarray  # (..., J) Σ |x_i| over the taps with |v| < 6
    taps: int  # most taps with |v| < 6 of any output
    tap_error: float  # bound on a float32 tap's absolute error

    def exact_bound(self) -> np.ndarray:
        """How far a float32 implementation of torchaudio's arithmetic may be from `y`."""
        return self.taps * U * self.magnitude + self.tap_error * self.support

    def twin_bound(self) -> np.ndarray:
        """How far two float32 implementations of torchaudio's arithmetic may be from each other."""
        return (2 * self.taps + 12) * U * self.magnitude


def output_length(n: int, orig: int, new: int) -> int:
    g = math.gcd(orig, new)
    return math.ceil(new // g * n / (orig // g))


def resample(x: np.ndarray, orig: int, new: int, start: int = 0, stop: int | None = None) -> Reference:
    """Outputs [start, stop) of resampling the last axis of `x` from `orig` to `new` Hz."""
    x = np.asarray(x, dtype=np.float64)
    n = x.shape[-1]
    stop = output_length(n, orig, new) if stop is None else stop
    b = ROLLOFF * min(orig, new)  # cutoff in Hz
    half = WIDTH * orig / b  # half support, in input samples
    j = np.arange(start, stop)
    first = np.floor(j * orig / new - half).astype(np.int64)
    i = first[:, None] + np.arange(int(math.ceil(2 * half)) + 2)  # (J, K) candidate inputs
    v = b * (i / orig - j[:, None] / new)
    inside = (np.abs(v) < WIDTH) & (i >= 0) & (i < n)
    k = np.where(inside, (b / orig) * np.sinc(v) * np.cos(np.pi * v / (2 * WIDTH)) ** 2, 0.0)
    xi = x[..., np.clip(i, 0, n - 1)]  # (..., J, K); taps outside the signal have k = 0
    g = math.gcd(orig, new)
    o, b_red = orig // g, b / g
    w = math.ceil(WIDTH * o / b_red)
    dv = U * (2 * b_red * (2 + w / o) + 2 * WIDTH)
    tap_error = (b / orig) * (1.63 * dv + 16 * U)
    return Reference(
        y=(k * xi).sum(-1),
        magnitude=(np.abs(k) * np.abs(xi)).sum(-1),
        support=np.where(inside, np.abs(xi), 0.0).sum(-1),
        taps=int((np.abs(v) < WIDTH).sum(-1).max()),
        tap_error=tap_error,
    )
