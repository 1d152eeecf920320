"""Kaldi filterbank and ImageBind melspec against torchaudio/ImageBind reference outputs."""

import math

import numpy as np
import pytest
import torch

from media import FIXTURES
from pipeline.fbank import FLOAT32_EPS, MEL_MEAN, MEL_STD, kaldi_fbank, melspec, pad_or_cut

REF = np.load(FIXTURES / "fbank.npz")
NAMES = [str(n) for n in REF["names"]]
PAD_VALUE = (np.float32(0.0) - np.float32(MEL_MEAN)) / np.float32(MEL_STD)  # a padded frame, normalised in float32


@pytest.mark.parametrize("name", NAMES)
def test_fbank_matches_torchaudio(name: str) -> None:
    w = torch.from_numpy(REF[f"{name}_waveform"])
    got = kaldi_fbank(w - w.mean()).numpy()
    want = REF[f"{name}_fbank"]
    assert got.shape == want.shape
    diff = float(np.abs(got - want).max())
    print(f"{name}: fbank max abs diff {diff:.3g}")
    assert diff <= 1e-5


@pytest.mark.parametrize("name", NAMES)
def test_melspec_matches_imagebind(name: str) -> None:
    got = melspec(torch.from_numpy(REF[f"{name}_waveform"])).numpy()
    want = REF[f"{name}_melspec"]
    assert got.shape == want.shape == (128, 204)
    diff = float(np.abs(got - want).max())
    print(f"{name}: melspec max abs diff {diff:.3g}")
    assert diff <= 1e-5


@pytest.mark.parametrize("n", [400, 401, 559, 560, 20800, 32000, 48000])
def test_frame_count_rule(n: int) -> None:
    w = torch.randn(1, n, generator=torch.Generator().manual_seed(n))
    assert kaldi_fbank(w).shape == (1 + (n - 400) // 160, 128)


def test_too_short_for_one_frame() -> None:
    with pytest.raises(ValueError):
        kaldi_fbank(torch.zeros(1, 399))


def test_uses_channel_zero_only() -> None:
    g = torch.Generator().manual_seed(0)
    left = torch.randn(1, 8000, generator=g)
    stereo = torch.cat([left, torch.randn(1, 8000, generator=g)])
    assert torch.equal(kaldi_fbank(stereo), kaldi_fbank(left))


def _kaldi_mel(f: float) -> float:
    return 1127.0 * math.log(1.0 + f / 700.0)


@pytest.mark.parametrize("freq", [300.0, 1000.0, 3000.0, 6000.0])
def test_pure_tone_peaks_at_its_mel_bin(freq: float) -> None:
    # Independent of torchaudio: bin k is centred at mel_low + (k + 1) * delta on the Kaldi mel
    # scale, 128 bins between 20 Hz and 8000 Hz.
    t = torch.arange(16000, dtype=torch.float64) / 16000
    w = (0.5 * torch.sin(2 * math.pi * freq * t)).float()[None]
    peak = kaldi_fbank(w).mean(dim=0).argmax().item()
    lo, hi = _kaldi_mel(20.0), _kaldi_mel(8000.0)
    delta = (hi - lo) / 129
    expected = round((_kaldi_mel(freq) - lo) / delta - 1)
    assert abs(peak - expected) <= 1


def test_silence_is_log_eps_and_padding_value() -> None:
    spec = melspec(torch.zeros(1, 32000))
    floor = (math.log(FLOAT32_EPS) - MEL_MEAN) / MEL_STD
    assert np.allclose(spec[:, :198].numpy(), floor, atol=1e-6)
    assert np.all(spec[:, 198:].numpy() == PAD_VALUE)


def test_pad_or_cut() -> None:
    x = torch.ones(128, 250)
    assert torch.equal(pad_or_cut(x, 204), x[:, :204])
    padded = pad_or_cut(torch.ones(128, 100), 204)
    assert padded.shape == (128, 204) and padded[:, 100:].abs().sum() == 0


def test_melspec_subtracts_scalar_mean_over_all_channels() -> None:
    g = torch.Generator().manual_seed(1)
    w = torch.randn(2, 32000, generator=g) + torch.tensor([[0.3], [-0.1]])
    centred = w - w.mean()
    assert torch.equal(melspec(w), melspec(centred, subtract_mean=False))
