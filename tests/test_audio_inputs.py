"""Decoding and ImageBind audio inputs: reference fixtures and real ffmpeg-made media."""

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from mvbind.errors import MediaError, NoStreamError
from mvbind.pipeline.encoders.imagebind.audio import AudioSettings, audio_inputs, decode_audio, waveform_inputs
from mvbind.pipeline.encoders.imagebind.resample import resample
from tests.media import FIXTURES, make_video, run_ffmpeg
from tests.ref_fbank import melspec_ratios, reference_clips

PRE = FIXTURES / "preprocess"
NO_QUIRK = AudioSettings(reference_overlap_quirk=False)
PAD_VALUE = (np.float32(0.0) - np.float32(-4.268)) / np.float32(9.138)


def _max_diff(a: torch.Tensor, b: np.ndarray) -> float:
    return float(np.abs(a.numpy() - b).max())


# ── reference fixtures ──────────────────────────────────────────────────────────────────────


def _reference(source: str, *, quirk: bool = True, ours: torch.Tensor | None = None) -> tuple[dict, list]:
    """The fixture and float64 per-clip references built from its 16 kHz waveform.

    `ours`: our own 16 kHz waveform, whose per-sample distance from the fixture's widens the bound.
    """
    want = dict(np.load(PRE / f"{Path(source).stem}_expected.npz"))
    if "waveform_16k" in want:
        w16 = want["waveform_16k"]
    else:  # a 16 kHz file: upstream does not resample, and int16 PCM decodes exactly (k / 32768)
        w16 = decode_audio(PRE / source)[0].numpy()
    err = None if ours is None else np.abs(ours.numpy().astype(np.float64) - w16).max(axis=0)
    return want, reference_clips(w16, [tuple(r) for r in want["audio_sample_ranges"]], quirk=quirk,
                                 input_error=err)


def test_clip_mp4_matches_imagebind() -> None:
    waveform, rate = decode_audio(PRE / "clip.mp4")
    ours16 = resample(waveform, rate, 16000)
    want, refs = _reference("clip.mp4", ours=ours16)
    got = audio_inputs(PRE / "clip.mp4")
    assert got.melspec.shape == (3, 1, 128, 204) and got.melspec.dtype == torch.float32
    ratios = melspec_ratios(got.melspec.numpy(), refs)
    diff = _max_diff(got.melspec, want["audio"][0])
    print(f"clip.mp4 audio error / bound per clip {ratios}, max abs diff {diff:.3g}")
    assert max(ratios) <= 1.0
    assert max(melspec_ratios(want["audio"][0], refs)) <= 1.0  # the bound holds for ImageBind's own output
    assert np.array_equal(np.array(got.clips), want["audio_clips"])
    assert np.array_equal(np.array(got.sample_ranges), want["audio_sample_ranges"])
    assert got.source_sample_rate == int(want["source_sample_rate"]) == 44100
    assert got.source_channels == int(want["source_channels"]) == 2
    assert got.source_num_samples == int(want["source_num_samples"]) == 198656
    assert got.duration == want["waveform_16k"].shape[1] / 16000
    # 2 s clips: 198 frames, then 6 padded frames.
    assert np.all(got.melspec[..., 198:].numpy() == PAD_VALUE)


def test_clip_mp4_from_reference_waveform_matches() -> None:
    # Given torchaudio's 16 kHz waveform, everything after resampling is upstream's arithmetic:
    # within the float32 error model of an independent float64 computation, as ImageBind's is.
    want, refs = _reference("clip.mp4")
    got = waveform_inputs(torch.from_numpy(want["waveform_16k"]), 16000)
    ratios = melspec_ratios(got.melspec.numpy(), refs)
    print(f"clip.mp4 from the reference waveform: error / bound per clip {ratios}")
    assert max(ratios) <= 1.0 and max(melspec_ratios(want["audio"][0], refs)) <= 1.0


def test_decode_clip_mp4() -> None:
    waveform, rate = decode_audio(PRE / "clip.mp4")
    assert rate == 44100 and waveform.dtype == torch.float32 and waveform.shape == (2, 198656)
    assert waveform.abs().max() <= 1.0


def test_dc_offset_quirk_matches_reference() -> None:
    want, refs = _reference("dc_offset.wav")
    got = audio_inputs(PRE / "dc_offset.wav")
    ratios = melspec_ratios(got.melspec.numpy(), refs)
    print(f"dc_offset.wav audio error / bound per clip (quirk on) {ratios}")
    assert max(ratios) <= 1.0 and max(melspec_ratios(want["audio"][0], refs)) <= 1.0
    assert got.sample_ranges == [(0, 32000), (8000, 40000), (16000, 48000)]


def test_dc_offset_without_quirk_differs_on_overlapping_clips() -> None:
    want, quirk_refs = _reference("dc_offset.wav")
    _, copy_refs = _reference("dc_offset.wav", quirk=False)
    got = audio_inputs(PRE / "dc_offset.wav", NO_QUIRK).melspec.numpy()
    assert max(melspec_ratios(got, copy_refs)) <= 1.0  # each clip on its own copy, as specified
    per_clip = [float(np.abs(got[i] - want["audio"][0][i]).max()) for i in range(3)]
    print(f"dc_offset.wav per-clip max abs diff to ImageBind (quirk off) {per_clip}")
    assert melspec_ratios(got[:1], quirk_refs[:1])[0] <= 1.0  # the first clip is never affected
    assert per_clip[1] > 0.1 and per_clip[2] > 0.1


def test_waveform_inputs_leaves_input_untouched() -> None:
    waveform, rate = decode_audio(PRE / "dc_offset.wav")
    before = waveform.clone()
    waveform_inputs(waveform, rate)
    assert torch.equal(waveform, before)


def test_settings_serialise() -> None:
    settings = AudioSettings()
    assert json.loads(json.dumps(dataclasses.asdict(settings)))["reference_overlap_quirk"] is True


# ── real media made with ffmpeg ─────────────────────────────────────────────────────────────


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("audio_media")


@pytest.mark.parametrize("channels", [1, 2, 6])
def test_channel_counts(media: Path, channels: int) -> None:
    path = make_video(media / f"ch{channels}.mp4", duration=3.0, size=(64, 64), audio_channels=channels,
                      sample_rate=48000, freq=1000.0)
    got = audio_inputs(path)
    assert got.source_channels == channels and got.source_sample_rate == 48000
    assert got.melspec.shape == (3, 1, 128, 204)
    assert torch.isfinite(got.melspec).all()
    assert 3.0 <= got.duration < 3.1  # AAC adds up to one frame of padding at the end


def test_short_clip_gives_more_padding(media: Path) -> None:
    path = make_video(media / "short.mp4", duration=0.3, size=(64, 64), audio_channels=2)
    got = audio_inputs(path)
    assert got.melspec.shape == (3, 1, 128, 204)
    assert got.clips == [(0.0, 2.0)] * 3
    n16 = round(got.duration * 16000)
    assert got.sample_ranges == [(0, n16)] * 3
    frames = 1 + (n16 - 400) // 160
    spec = got.melspec.numpy()
    assert np.all(spec[..., frames:] == PAD_VALUE)
    assert not np.all(spec[..., frames - 1] == PAD_VALUE)


def test_no_audio_stream(media: Path) -> None:
    path = make_video(media / "silent.mp4", duration=1.0, size=(64, 64), audio_channels=None)
    with pytest.raises(NoStreamError, match="no audio stream"):
        audio_inputs(path)


@pytest.mark.parametrize("content", [b"", b"this is not a video\n" * 20])
def test_unreadable_files(media: Path, content: bytes) -> None:
    path = media / f"bad{len(content)}.mp4"
    path.write_bytes(content)
    with pytest.raises(MediaError) as info:
        audio_inputs(path)
    assert not isinstance(info.value, NoStreamError)
    message = str(info.value)
    assert message and "\n" not in message and len(message) < 200


def test_missing_file(media: Path) -> None:
    with pytest.raises(MediaError):
        decode_audio(media / "does-not-exist.mp4")


def test_empty_waveform() -> None:
    with pytest.raises(MediaError, match="audio stream is empty"):
        waveform_inputs(torch.zeros(2, 0), 44100)


def test_truncated_file_gives_what_was_decoded(media: Path) -> None:
    data = (PRE / "clip.mp4").read_bytes()  # faststart: the index comes first
    path = media / "truncated.mp4"
    path.write_bytes(data[: len(data) // 2])
    waveform, rate = decode_audio(path)
    assert rate == 44100 and 0 < waveform.shape[1] < 198656
    assert audio_inputs(path).melspec.shape == (3, 1, 128, 204)


@pytest.mark.parametrize("codec", ["pcm_u8", "pcm_s16le", "pcm_s32le", "pcm_f32le", "pcm_f64le", "flac", "libmp3lame"])
def test_sample_formats_decode_to_the_same_float_signal(media: Path, codec: str) -> None:
    # Packed integer/float PCM, FLAC (s16) and MP3 (planar float) all give float32 in [-1, 1]
    # with the channels in order: left = +s/2, right = -s/2 for ffmpeg's sine (amplitude 1/8).
    ext = {"flac": ".flac", "libmp3lame": ".mp3"}.get(codec, ".wav")
    path = media / f"fmt_{codec}{ext}"
    tone = "sine=frequency=440:sample_rate=22050:duration=0.5"
    run_ffmpeg("-f", "lavfi", "-i", tone, "-af", "pan=stereo|c0=0.5*c0|c1=-0.5*c0", "-c:a", codec, str(path))
    waveform, rate = decode_audio(path)
    assert rate == 22050 and waveform.shape[0] == 2 and waveform.dtype == torch.float32
    assert waveform.shape[1] >= 11025
    if codec == "libmp3lame":  # lossy, with encoder delay: level and polarity only
        assert 0.05 < waveform[0].abs().max() < 0.075
        assert torch.corrcoef(waveform)[0, 1] < -0.99
        return
    n = 11025
    t = torch.arange(n, dtype=torch.float64) / 22050
    expected = (0.0625 * torch.sin(2 * torch.pi * 440 * t)).float()
    tolerance = 1.5 / 128 if codec == "pcm_u8" else 1e-4
    assert torch.allclose(waveform[0, :n], expected, atol=tolerance)
    assert torch.allclose(waveform[1, :n], -expected, atol=tolerance)
