"""Kaldi filterbank and ImageBind melspec against torchaudio/ImageBind reference outputs.

Parity is judged by an error model (`ref_fbank.py`): each (frame, mel bin) may differ from an
independent float64 filterbank by a bound derived from float32 arithmetic, so the tests hold on
any CPU code path (MKL's AVX2 and AVX-512 FFTs differ in their last bits, which moves quiet bins
near the log floor by up to 0.03 in the log domain) and still fail on a wrong window,
pre-emphasis or mel edge (`test_error_model_catches_planted_bugs`).
"""

import math

import numpy as np
import pytest
import torch

import mvbind.pipeline.encoders.imagebind.fbank as fbank_module
from mvbind.pipeline.encoders.imagebind.fbank import FLOAT32_EPS, MEL_MEAN, MEL_STD, kaldi_fbank, melspec, pad_or_cut
from tests.media import FIXTURES
from tests.ref_fbank import Reference, log_error_ratio, melspec_to_log, reference_fbank

REF = np.load(FIXTURES / "fbank.npz")
NAMES = [str(n) for n in REF["names"]]
PAD_VALUE = (np.float32(0.0) - np.float32(MEL_MEAN)) / np.float32(MEL_STD)  # a padded frame, normalised in float32


def _centred(name: str) -> tuple[torch.Tensor, Reference]:
    """The fixture waveform, mean-subtracted in float32 (as upstream does), and its float64 reference."""
    w = torch.from_numpy(REF[f"{name}_waveform"])
    w64 = REF[f"{name}_waveform"][0].astype(np.float64)
    return w - w.mean(), reference_fbank(w64 - w64.mean())


@pytest.mark.parametrize("name", NAMES)
def test_torchaudio_fixture_is_within_the_error_model(name: str) -> None:
    # Validates the reference and its bound: torchaudio's own float32 output must lie inside it.
    _, ref = _centred(name)
    ratio = log_error_ratio(REF[f"{name}_fbank"], ref)
    print(f"{name}: torchaudio fbank error / bound {ratio:.3g}")
    assert ratio <= 1.0


@pytest.mark.parametrize("name", NAMES)
def test_fbank_matches_torchaudio(name: str) -> None:
    centred, ref = _centred(name)
    got = kaldi_fbank(centred).numpy()
    want = REF[f"{name}_fbank"]
    assert got.shape == want.shape
    ratio = log_error_ratio(got, ref)
    print(f"{name}: fbank error / bound {ratio:.3g}, max abs log diff to torchaudio {np.abs(got - want).max():.3g}")
    assert ratio <= 1.0  # with the fixture test above: ours and torchaudio's within 2 bounds of each other


@pytest.mark.parametrize("name", NAMES)
def test_melspec_matches_imagebind(name: str) -> None:
    _, ref = _centred(name)
    got = melspec(torch.from_numpy(REF[f"{name}_waveform"])).numpy()
    want = REF[f"{name}_melspec"]
    assert got.shape == want.shape == (128, 204)
    frames = ref.mel.shape[0]
    for label, spec in (("ours", got), ("ImageBind", want)):
        log, err = melspec_to_log(spec, frames, MEL_MEAN, MEL_STD)
        ratio = log_error_ratio(log, ref, log_abs_err=err)
        print(f"{name}: {label} melspec error / bound {ratio:.3g}")
        assert ratio <= 1.0
    assert np.all(got[:, frames:] == PAD_VALUE) and np.all(want[:, frames:] == PAD_VALUE)


def _hamming(size, dtype, device):
    return torch.hamming_window(size, periodic=False, dtype=dtype, device=device)


def _periodic_hann(size, dtype, device):
    return torch.hann_window(size, periodic=True, dtype=dtype, device=device)


_BANKS = fbank_module._mel_banks
PLANTED = {
    "hamming window": ("_hann", _hamming),
    "periodic hann window": ("_hann", _periodic_hann),
    "pre-emphasis 0.975": ("PREEMPHASIS", 0.975),
    "mel low edge 21 Hz": ("_mel_banks", lambda n, f, sr, lo, hi: _BANKS(n, f, sr, lo + 1.0, hi)),
    "mel high edge 7990 Hz": ("_mel_banks", lambda n, f, sr, lo, hi: _BANKS(n, f, sr, lo, hi - 10.0)),
}


@pytest.mark.parametrize("bug", PLANTED)
def test_error_model_catches_planted_bugs(bug: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # The bound must be tight enough that a subtly wrong filterbank fails the parity tests.
    attr, value = PLANTED[bug]
    monkeypatch.setattr(fbank_module, attr, value)
    ratios = {}
    for name in NAMES:
        centred, ref = _centred(name)
        ratios[name] = log_error_ratio(kaldi_fbank(centred).numpy(), ref)
    print(f"{bug}: error / bound {ratios}")
    assert ratios["silence"] <= 1.0  # nothing to see in silence
    assert min(r for n, r in ratios.items() if n != "silence") > 10.0


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
    # Channel 0's filterbank after subtracting the mean over *all* channels, against the float64
    # reference of exactly that. (Per-frame DC removal hides which constant was subtracted; the
    # in-place overlap quirk makes it visible, and dc_offset.wav pins it in test_audio_inputs.)
    g = torch.Generator().manual_seed(1)
    w = torch.randn(2, 32000, generator=g) + torch.tensor([[0.3], [-0.1]])
    w64 = w.numpy().astype(np.float64)
    ref = reference_fbank(w64[0] - w64.mean())
    log, err = melspec_to_log(melspec(w).numpy(), ref.mel.shape[0], MEL_MEAN, MEL_STD)
    assert log_error_ratio(log, ref, log_abs_err=err) <= 1.0
