"""Sinc resampling against torchaudio.functional.resample reference output, plus sanity checks.

Besides torchaudio's own output (clip_expected.npz), results are checked against an independent
float64 resampler written from torchaudio's documented kernel (ref_resample.py), within a bound
derived from float32 arithmetic (valid on any CPU code path).
"""

import hashlib
import math

import numpy as np
import pytest
import torch

from mvbind.pipeline.encoders.imagebind.resample import resample, resample_span, resampled_length
from mvbind.pipeline.media.audio import decode_audio
from tests import ref_resample
from tests.media import FIXTURES

CLIP = FIXTURES / "preprocess" / "clip.mp4"


@pytest.fixture(scope="module")
def clip_44k() -> torch.Tensor:
    waveform, rate = decode_audio(CLIP)
    assert rate == 44100
    return waveform


def test_matches_torchaudio_on_clip(clip_44k: torch.Tensor) -> None:
    # torchaudio's output for this clip (the fixture) and ours are two float32 evaluations of the
    # same sums: each is within `exact_bound` of the float64 resample of the decoded samples, so
    # they are within twice that of each other (triangle inequality), on any CPU code path. The
    # three checks are separate so that a failure says which part moved: our resample, or the
    # decoded input the fixture was made from.
    want = np.load(FIXTURES / "preprocess" / "clip_expected.npz")["waveform_16k"]
    got = resample(clip_44k, 44100, 16000)
    assert got.dtype == torch.float32 and got.shape == want.shape == (2, 72075)
    ref = ref_resample.resample(clip_44k.numpy(), 44100, 16000)
    bound = ref.exact_bound()
    ours = assert_within_bound(got, ref)
    digest = hashlib.sha256(clip_44k.numpy().tobytes()).hexdigest()[:16]
    theirs = float((np.abs(want - ref.y) / bound).max())
    assert theirs <= 1.0, (
        f"the fixture is {theirs:.3g} bounds from the float64 resample of this decode (sha {digest}): "
        "the decoded input differs from the one torchaudio resampled"
    )
    diff = np.abs(got.numpy() - want)
    ratio = float((diff / (2 * bound)).max())
    print(f"resample 44100->16000: max abs diff to torchaudio {diff.max():.3g} ({ratio:.3g} of the bound), "
          f"ours / theirs to float64 {ours:.3g} / {theirs:.3g} of the bound, input sha {digest}")
    assert ratio <= 1.0, f"max abs diff {diff.max():.3g} (input sha {digest})"


@pytest.mark.parametrize(
    "n, orig, new",
    [(198656, 44100, 16000), (1, 44100, 16000), (441, 44100, 16000), (442, 44100, 16000),
     (48001, 48000, 16000), (12345, 22050, 16000), (1000, 8000, 16000), (999, 11025, 16000)],
)
def test_output_length_rule(n: int, orig: int, new: int) -> None:
    g = math.gcd(orig, new)
    expected = math.ceil((new // g) * n / (orig // g))
    assert resampled_length(n, orig, new) == expected
    assert resample(torch.zeros(2, n), orig, new).shape == (2, expected)


def test_identity_when_rates_equal() -> None:
    w = torch.randn(2, 1000)
    assert resample(w, 16000, 16000) is w


def assert_within_bound(got: torch.Tensor, ref: ref_resample.Reference) -> float:
    """float32 output against the float64 reference, per sample; returns error / bound."""
    assert got.dtype == torch.float32 and tuple(got.shape) == ref.y.shape
    ratio = float((np.abs(got.numpy() - ref.y) / ref.exact_bound()).max())
    assert ratio <= 1.0, f"error / bound {ratio:.3g}"
    return ratio


def test_any_leading_shape() -> None:
    # Six different noise rows in a (2, 3, N) batch: each output row must be the float64
    # reference's resample of its own input row (noise fills the whole band, so a wrong
    # cutoff shows as well as rows that are mixed up or shifted).
    w = torch.randn(2, 3, 4410, generator=torch.Generator().manual_seed(0))
    out = resample(w, 44100, 16000)
    assert out.shape == (2, 3, 1600)
    ratio = assert_within_bound(out, ref_resample.resample(w.numpy(), 44100, 16000))
    print(f"(2, 3, 4410) noise: error / bound {ratio:.3g}")


@pytest.mark.parametrize("start, stop", [(0, 100), (5, 32005), (20037, 52037), (72000, 80000), (71999, 72075)])
def test_span_equals_slice_of_full(clip_44k: torch.Tensor, start: int, stop: int) -> None:
    # A span is the slice [start, stop) of the full resample (clamped to its 72075 samples): checked
    # against the float64 reference computed for exactly those output samples, and against the
    # full resample's slice. The latter uses the same float32 taps; only the summation order may
    # differ with the input length (conv1d blocking), hence the twin bound.
    part = resample_span(clip_44k, 44100, 16000, start, stop)
    stop = min(stop, 72075)
    assert part.shape == (2, stop - start)
    ref = ref_resample.resample(clip_44k.numpy(), 44100, 16000, start, stop)
    assert np.abs(ref.y).max() > 100 * ref.exact_bound().max()  # the clip's tones, far from silence
    ratio = assert_within_bound(part, ref)
    full = resample(clip_44k, 44100, 16000)[:, start:stop]
    twin = float((np.abs(part.numpy() - full.numpy()) / ref.twin_bound()).max())
    print(f"span [{start}, {stop}): error / bound {ratio:.3g}, vs the full resample / twin bound {twin:.3g}")
    assert twin <= 1.0


def _tone(freq: float, rate: int, seconds: float = 1.0) -> torch.Tensor:
    t = torch.arange(int(rate * seconds), dtype=torch.float64) / rate
    return torch.sin(2 * math.pi * freq * t).float()


@pytest.mark.parametrize("orig", [44100, 48000, 22050, 8000])
def test_tone_keeps_its_frequency_and_level(orig: int) -> None:
    out = resample(_tone(1000.0, orig), orig, 16000)
    core = out[2000:-2000].double()  # away from the zero-padded edges
    spectrum = torch.fft.rfft(core * torch.hann_window(core.numel(), dtype=torch.float64)).abs()
    peak_hz = spectrum.argmax().item() * 16000 / core.numel()
    assert abs(peak_hz - 1000.0) < 2.0
    assert abs(core.abs().max().item() - 1.0) < 0.01
    # The resampled tone is the same tone sampled at 16 kHz.
    assert torch.allclose(out[2000:-2000], _tone(1000.0, 16000)[2000:-2000], atol=2e-3)


@pytest.mark.parametrize("freq, limit", [(9000.0, 0.2), (10000.0, 1e-2), (12000.0, 5e-3), (20000.0, 1e-3)])
def test_content_above_new_nyquist_is_removed(freq: float, limit: float) -> None:
    # Cutoff 0.99 * 8 kHz; the width-6 Hann-windowed sinc has a gentle transition band, so a
    # 9 kHz tone (which would alias to 7 kHz) is attenuated, and from 10 kHz on it is gone.
    out = resample(_tone(freq, 44100), 44100, 16000)
    assert out[2000:-2000].abs().max().item() < limit  # input amplitude 1


def test_rejects_bad_rates() -> None:
    with pytest.raises(ValueError):
        resample(torch.zeros(10), 0, 16000)
    with pytest.raises(ValueError):
        resample(torch.zeros(10), 44100.5, 16000)  # type: ignore[arg-type]
