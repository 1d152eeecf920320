"""encoder.transforms = "device": workers ship uint8 pixels and clip waveforms, the embedder finishes
ImageBind's inputs on its device. The CPU path (vision.video_inputs, audio.audio_inputs) is the
reference; the device path must give the same inputs and the same cached embeddings.

Bounds, from the arithmetic: the device path runs the same float32 operations in the same order
(uint8 -> /255, two-tap lerp on rows then columns, (x - mean) / std, crops; the same filterbank
code), each an IEEE-rounded elementwise op, so on a CPU the inputs are identical bit for bit on any
code path (vectorised or not, elementwise ops round the same). A GPU may contract a multiply-add
into one FMA, which changes a lerp by at most one rounding of a value in [0, 1] (2**-24), i.e.
~2.3e-7 after division by std >= 0.26: the GPU test allows 1e-6. Embeddings are compared at
their fp16 storage precision: at most one fp16 step apart.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from mvbind.cache import FeatureCache
from mvbind.pipeline.config import load_config
from mvbind.pipeline.config.schema import AudioSettings, VideoSettings
from mvbind.pipeline.encoders.base import extractor_settings, make_preparer
from mvbind.pipeline.encoders.imagebind.audio import audio_inputs
from mvbind.pipeline.encoders.imagebind.compact import CompactAudio, CompactVideo, audio_clips, video_pixels
from mvbind.pipeline.encoders.imagebind.encoder import transforms_on_device
from mvbind.pipeline.encoders.imagebind.vision import video_inputs
from mvbind.stages.extract import extract
from tests.media import make_video

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("device_transforms")
    return {
        "landscape": make_video(folder / "landscape.mp4", duration=3.0, size=(400, 226), freq=330),
        "portrait": make_video(folder / "portrait.mp4", duration=2.5, size=(226, 402), freq=660, audio_channels=2),
        "small": make_video(folder / "small.webm", duration=2.0, size=(96, 160), freq=880),  # upscaled
        "boxed": make_video(folder / "boxed.mp4", duration=2.0, size=(160, 90), pad=(160, 288), freq=440),
        "short": make_video(folder / "short.mp4", duration=1.3, size=(300, 300), freq=550),  # overlapping clips
        "silent": make_video(folder / "silent.mp4", duration=2.0, size=(128, 128), audio_channels=None),
    }


VIDEO_SETTINGS = {
    "3 crops": VideoSettings(),
    "1 crop": dataclasses.replace(VideoSettings(), crops=1),
    "3 frames, no borders": dataclasses.replace(VideoSettings(), frames_per_clip=3, remove_borders=False),
}


@pytest.mark.parametrize("name", ["landscape", "portrait", "small", "boxed", "short"])
@pytest.mark.parametrize("setting", list(VIDEO_SETTINGS))
def test_video_pixels_finished_equal_the_reference_inputs(media, name, setting):
    settings = VIDEO_SETTINGS[setting]
    ref = video_inputs(media[name], settings)
    compact, duration = video_pixels(media[name], settings)
    got = compact.finish()
    assert got.dtype == torch.float32 and got.shape == ref.frames.shape
    assert len(compact) == len(ref.frames) and duration == ref.duration
    assert torch.equal(got, ref.frames), (got - ref.frames).abs().max()
    # Compact means compact: the kept frames once, only the source lines the two taps per output line
    # read (never more than the source has), as uint8.
    frames = len({i for kept in ref.plan.frame_indices for i in kept})
    assert compact.pixels.dtype == torch.uint8 and compact.pixels.shape[0] == frames
    assert compact.pixels.shape[1] <= 2 * len(compact.rows[0]) and compact.pixels.shape[2] <= 2 * len(compact.cols[0])
    if settings.crops == 3:
        assert compact.nbytes < ref.frames.numel() * 4 / 3


def test_a_wrong_tap_is_caught(media):
    # The comparison above can fail: shifting one row tap by one source line changes the input.
    ref = video_inputs(media["landscape"]).frames
    compact, _ = video_pixels(media["landscape"])
    i0, i1, w0, w1 = compact.rows
    shifted = i0.clone()
    shifted[len(shifted) // 2] += 1
    broken = dataclasses.replace(compact, rows=(shifted, i1, w0, w1)).finish()
    assert not torch.equal(broken, ref)


@pytest.mark.parametrize("name", ["landscape", "portrait", "short", "small"])
@pytest.mark.parametrize("quirk", [True, False])
def test_audio_clips_finished_equal_the_reference_melspec(media, name, quirk):
    settings = dataclasses.replace(AudioSettings(), reference_overlap_quirk=quirk)
    ref = audio_inputs(media[name], settings)
    compact, duration = audio_clips(media[name], settings)
    assert duration == ref.duration and len(compact) == len(ref.melspec)
    assert compact.waves.dtype == torch.float32
    assert torch.equal(compact.finish(), ref.melspec)


def test_short_audio_exercises_overlapping_clips(media):
    # 1.3 s with 3 clips of 2 s: every clip overlaps, so the quirk's in-place shifts matter and the
    # waves must be taken as each clip's filterbank read them.
    quirk, plain = (audio_clips(media["short"], dataclasses.replace(AudioSettings(), reference_overlap_quirk=q))[0]
                    for q in (True, False))
    assert not torch.equal(quirk.waves, plain.waves)


def tiny(cache: Path, transforms: str, workers: int = 2):
    return load_config(overrides={"encoder.arch": "tiny", "encoder.weights": "random", "paths.cache": str(cache),
                                  "extract.workers": workers, "encoder.batch_size": 3, "encoder.device": "cpu",
                                  "encoder.transforms": transforms, "encoder.forward_clips": 7})


def test_transforms_setting_resolves():
    assert not transforms_on_device(tiny(Path("/tmp/x"), "auto"))  # a CPU device: the reference path
    assert transforms_on_device(tiny(Path("/tmp/x"), "device"))
    prepared = make_preparer(tiny(Path("/tmp/x"), "device"))
    assert prepared.compact


def test_extract_with_device_transforms_fills_the_same_cache(media, tmp_path):
    # Same namespace (where transforms run is not part of the identity), same keys, embeddings at most
    # one fp16 step apart; the compact inputs travel through real DataLoader worker processes.
    folder = tmp_path / "videos"
    folder.mkdir()
    for path in media.values():
        (folder / path.name).symlink_to(path)
    caches = {}
    for transforms in ("cpu", "device"):
        config = tiny(tmp_path / transforms, transforms)
        summary = extract(config, folder, progress=False)
        assert (summary.extracted, len(summary.failed), summary.without_audio) == (6, 0, 1), summary.lines()
        assert "to device" in "\n".join(summary.lines())
        caches[transforms] = FeatureCache(tmp_path / transforms).get(extractor_settings(config)).load()
    ref, got = caches["cpu"], caches["device"]
    assert FeatureCache(tmp_path / "cpu").namespaces()[0].fingerprint == \
        FeatureCache(tmp_path / "device").namespaces()[0].fingerprint
    order = np.argsort(got.keys)
    assert list(np.asarray(ref.keys)[np.argsort(ref.keys)]) == list(np.asarray(got.keys)[order])
    for name in ("audio", "video"):
        a = getattr(ref, name)[np.argsort(ref.keys)].astype(np.float32)
        b = getattr(got, name)[order].astype(np.float32)
        step = np.spacing(np.maximum(np.abs(a), np.abs(b)).astype(np.float16)).astype(np.float32)
        assert np.all(np.abs(a - b) <= step), name
    np.testing.assert_array_equal(ref.audio_mask[np.argsort(ref.keys)], got.audio_mask[order])


def test_compact_inputs_report_their_rows_and_bytes(media):
    video, _ = video_pixels(media["portrait"])
    audio, _ = audio_clips(media["portrait"])
    assert isinstance(video, CompactVideo) and isinstance(audio, CompactAudio)
    assert len(video) == 15 and len(audio) == 3
    assert video.nbytes == video.pixels.numel() and audio.nbytes == audio.waves.numel() * 4


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_a_gpu_device_transforms_match_the_cpu_reference(media):
    device = torch.device("cuda")
    for name in ("landscape", "portrait", "boxed"):
        ref = video_inputs(media[name]).frames
        compact, _ = video_pixels(media[name])
        got = compact.pin_memory().to(device, non_blocking=True).finish().cpu()
        assert (got - ref).abs().max().item() <= 1e-6
        ref_a = audio_inputs(media[name]).melspec
        got_a = audio_clips(media[name])[0].pin_memory().to(device).finish().cpu()
        # cuFFT vs the CPU FFT: relative to the frame energy, as tests/ref_fbank.py bounds it.
        assert torch.allclose(got_a, ref_a, atol=2e-3, rtol=0)
