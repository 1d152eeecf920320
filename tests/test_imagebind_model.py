"""ImageBind audio + vision encoders against the reference fixtures of the original code."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from mvbind.pipeline.encoders.imagebind.model import ImageBindAV, build_imagebind, imagebind_config

MODEL_FIXTURES = Path(__file__).parent / "fixtures" / "model"
ATOL = 1e-5


@pytest.fixture(scope="module")
def tiny() -> ImageBindAV:
    """The tiny reference model with the fixture's weights loaded strictly."""
    model = build_imagebind("tiny", seed=0).eval()
    state = np.load(MODEL_FIXTURES / "tiny_state.npz")
    model.load_state_dict({k: torch.from_numpy(state[k]) for k in state.files}, strict=True)
    return model


@pytest.fixture(scope="module")
def inputs() -> dict[str, torch.Tensor]:
    data = np.load(MODEL_FIXTURES / "tiny_inputs.npz")
    return {"audio": torch.from_numpy(data["audio"]), "vision": torch.from_numpy(data["vision"])}


@pytest.fixture(scope="module")
def outputs(tiny: ImageBindAV, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Every fixture quantity, computed the way the reference README describes."""
    audio = inputs["audio"]  # (2, 3, 1, 128, 204): batch, clip, ...
    vision = inputs["vision"]  # (1, 15, 3, 2, 224, 224): batch, clip x crop, ...
    with torch.inference_mode():
        return {
            "audio_per_clip": tiny({"audio": audio.reshape(6, 1, 128, 204)})["audio"],
            "vision_per_clip": tiny({"vision": vision.reshape(15, 1, 3, 2, 224, 224)})["vision"],
            "audio_clip_avg": tiny({"audio": audio})["audio"],
            "vision_clip_avg": tiny({"vision": vision})["vision"],
            "audio_head": tiny.head_audio(audio.reshape(6, 1, 128, 204)),
            "vision_head": tiny.head_vision(vision.reshape(15, 3, 2, 224, 224)),
            "embed_audio": tiny.embed_audio(audio.reshape(6, 1, 128, 204)),
            "embed_vision": tiny.embed_vision(vision.reshape(15, 3, 2, 224, 224)),
        }


def test_tiny_config_matches_fixture() -> None:
    resolved = json.loads((MODEL_FIXTURES / "tiny_config.json").read_text())["resolved_kwargs"]
    config = imagebind_config("tiny")
    assert {k: resolved[k] for k in config} == {k: list(v) if isinstance(v, tuple) else v for k, v in config.items()}


def test_unknown_arch_names_valid_ones() -> None:
    with pytest.raises(ValueError, match="huge, small, tiny"):
        imagebind_config("giant")
    with pytest.raises(ValueError, match="vision_depth"):
        build_imagebind({"vision_depth": 3})


@pytest.mark.parametrize(
    "key", ["audio_per_clip", "vision_per_clip", "audio_clip_avg", "vision_clip_avg", "audio_head", "vision_head"]
)
def test_parity_with_upstream(outputs: dict[str, torch.Tensor], key: str) -> None:
    expected = np.load(MODEL_FIXTURES / "tiny_expected.npz")[key]
    got = outputs[key].numpy()
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=0, atol=ATOL)


def test_embed_matches_forward_per_clip(outputs: dict[str, torch.Tensor]) -> None:
    torch.testing.assert_close(outputs["embed_audio"], outputs["audio_per_clip"], rtol=0, atol=ATOL)
    torch.testing.assert_close(outputs["embed_vision"], outputs["vision_per_clip"], rtol=0, atol=ATOL)


def test_embed_shapes_and_norms(tiny: ImageBindAV, outputs: dict[str, torch.Tensor]) -> None:
    assert tiny.out_dim == 32
    audio, vision = outputs["embed_audio"], outputs["embed_vision"]
    assert audio.shape == (6, 32) and vision.shape == (15, 32)
    torch.testing.assert_close(audio.norm(dim=-1), torch.full((6,), 20.0))
    torch.testing.assert_close(vision.norm(dim=-1), torch.ones(15))
    # Clip averages are not re-normalised (upstream behaviour).
    assert (outputs["audio_clip_avg"].norm(dim=-1) < 20.0).all()
    assert (outputs["vision_clip_avg"].norm(dim=-1) < 1.0).all()


def test_single_frame_and_image_inputs_are_repeated(tiny: ImageBindAV, inputs: dict[str, torch.Tensor]) -> None:
    frame = inputs["vision"][0, :2, :, :1]  # (2, 3, 1, 224, 224)
    with torch.inference_mode():
        two = tiny.embed_vision(frame.repeat(1, 1, 2, 1, 1))
        torch.testing.assert_close(tiny.embed_vision(frame), two)
        torch.testing.assert_close(tiny.embed_vision(frame[:, :, 0]), two)


def test_bad_input_shapes_are_reported(tiny: ImageBindAV) -> None:
    with pytest.raises(ValueError, match="128, 204"):
        tiny.embed_audio(torch.zeros(2, 1, 128, 100))
    with pytest.raises(ValueError, match="224"):
        tiny.embed_vision(torch.zeros(1, 3, 2, 112, 112))


def test_drop_path_only_in_training(inputs: dict[str, torch.Tensor]) -> None:
    model = build_imagebind({**imagebind_config("tiny"), "audio_drop_path": 0.9}, seed=0).eval()
    audio = inputs["audio"].reshape(6, 1, 128, 204)[:2]
    torch.manual_seed(0)
    with torch.no_grad():
        evals = [model.embed_audio(audio) for _ in range(2)]
        model.train()
        trains = [model.embed_audio(audio) for _ in range(3)]
    torch.testing.assert_close(evals[0], evals[1], rtol=0, atol=0)
    assert any(not torch.equal(t, evals[0]) for t in trains)


def test_seed_makes_init_reproducible() -> None:
    a, b, c = (build_imagebind("tiny", seed=s).state_dict() for s in (7, 7, 8))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_huge_architecture_matches_official_keys() -> None:
    ref = json.loads((MODEL_FIXTURES / "huge_keys.json").read_text())
    with torch.device("meta"):  # 719M parameters without allocating 2.9 GB
        model = build_imagebind("huge")
    state = model.state_dict()
    expected = {e["key"]: (tuple(e["shape"]), e["dtype"]) for e in ref["keys"]}
    got = {k: (tuple(t.shape), str(t.dtype).removeprefix("torch.")) for k, t in state.items()}
    assert sorted(set(expected) - set(got)) == [] and sorted(set(got) - set(expected)) == []
    assert got == expected
    assert len(got) == ref["num_keys"] == 569
    assert sum(p.numel() for p in model.parameters()) == ref["num_parameters"] == 719_065_088
    assert [name for name, _ in model.named_buffers()] == ref["buffers"]
    assert model.out_dim == 1024

    audio = model.embed_audio(torch.empty(2, 1, 128, 204, device="meta"))
    vision = model.embed_vision(torch.empty(3, 3, 2, 224, 224, device="meta"))
    assert audio.shape == (2, 1024) and vision.shape == (3, 1024)
