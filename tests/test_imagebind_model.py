"""ImageBind audio + vision encoders against the reference fixtures of the original code.

Two independent anchors: upstream's own outputs for the tiny model (tiny_expected.npz) and a
float64 numpy forward written from the reference README (ref_imagebind.py), itself checked
against upstream here. Tolerances come from the float32 rounding budget in ref_imagebind.py
(valid on any CPU code path), never from what this machine happens to produce.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from mvbind.pipeline.encoders.imagebind.model import ImageBindAV, build_imagebind, imagebind_config
from tests.ref_imagebind import (
    U32,
    U64,
    assert_layout,
    audio_head,
    postprocess,
    rel_error,
    rounding_budget,
    vision_head,
)

MODEL_FIXTURES = Path(__file__).parent / "fixtures" / "model"
STATE = dict(np.load(MODEL_FIXTURES / "tiny_state.npz"))
EXPECTED = np.load(MODEL_FIXTURES / "tiny_expected.npz")
MODALITY = {key: key.split("_")[0] for key in EXPECTED.files}


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
    expected = EXPECTED[key]
    got = outputs[key].numpy()
    assert got.shape == expected.shape
    # Two float32 implementations: each within budget·u·||row|| of the exact result. A clip
    # average's error is at most its clips' error, so it is judged relative to a clip row's norm.
    norm = np.linalg.norm(EXPECTED[key.replace("clip_avg", "per_clip")], axis=-1).max() if "avg" in key else None
    ratio = rel_error(got, expected, norm) / (2 * rounding_budget(STATE, MODALITY[key]) * U32)
    print(f"{key}: error / bound {ratio:.3g}")
    assert ratio <= 1.0


@pytest.mark.parametrize("modality", ["audio", "vision"])
def test_embed_matches_upstream_per_clip(outputs: dict[str, torch.Tensor], modality: str) -> None:
    # embed_audio / embed_vision (one row per clip) are upstream's forward with S = 1 per clip.
    expected = EXPECTED[f"{modality}_per_clip"]
    got = outputs[f"embed_{modality}"].numpy()
    assert got.shape == expected.shape
    assert rel_error(got, expected) <= 2 * rounding_budget(STATE, modality) * U32


# Reference subset: every audio clip, and the three crops of vision clip 0 plus one crop of clip 1.
REF_AUDIO, REF_VISION = slice(0, 6), slice(0, 4)


@pytest.fixture(scope="module")
def reference(inputs: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """Head outputs of the float64 numpy forward (ref_imagebind.py)."""
    return {
        "audio_head": audio_head(STATE, inputs["audio"].reshape(6, 1, 128, 204)[REF_AUDIO].numpy()),
        "vision_head": vision_head(STATE, inputs["vision"].reshape(15, 3, 2, 224, 224)[REF_VISION].numpy()),
    }


@pytest.mark.parametrize("modality", ["audio", "vision"])
def test_float64_reference_matches_upstream(reference: dict[str, np.ndarray], modality: str) -> None:
    # Validates the reference: upstream's float32 outputs lie within one float32 budget of it.
    part = REF_AUDIO if modality == "audio" else REF_VISION
    head = reference[f"{modality}_head"]
    bound = rounding_budget(STATE, modality) * U32
    for key, ref in ((f"{modality}_head", head), (f"{modality}_per_clip", postprocess(head, STATE, modality))):
        ratio = rel_error(EXPECTED[key][part], ref) / bound
        print(f"{key}: upstream vs float64 reference, error / bound {ratio:.3g}")
        assert ratio <= 1.0


@pytest.mark.parametrize("modality", ["audio", "vision"])
def test_float64_forward_matches_reference(
    tiny: ImageBindAV, inputs: dict[str, torch.Tensor], reference: dict[str, np.ndarray], modality: str
) -> None:
    # The same model in float64 against the float64 reference: the budget times 2**-53 (~1e-12
    # relative) resolves what float32 cannot, e.g. a LayerNorm eps or a tanh-approximated GELU.
    model = copy.deepcopy(tiny).double()
    with torch.inference_mode():
        if modality == "audio":
            got = model.head_audio(inputs["audio"].reshape(6, 1, 128, 204)[REF_AUDIO].double())
        else:
            got = model.head_vision(inputs["vision"].reshape(15, 3, 2, 224, 224)[REF_VISION].double())
    assert got.dtype == torch.float64
    ratio = rel_error(got.numpy(), reference[f"{modality}_head"]) / (2 * rounding_budget(STATE, modality) * U64)
    print(f"{modality}: float64 forward vs float64 reference, error / bound {ratio:.3g}")
    assert ratio <= 1.0


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
    # Upstream's PadIm2Video repeats a single frame (or an image) to two frames; the float64
    # reference does that repeat itself (np.repeat), so a wrong pad (zeros, wrong axis) shows.
    frame = inputs["vision"][0, :2, :, :1]  # (2, 3, 1, 224, 224): one frame of two different clips
    want = postprocess(vision_head(STATE, frame.numpy()), STATE, "vision")
    bound = rounding_budget(STATE, "vision") * U32
    with torch.inference_mode():
        for x in (frame, frame[:, :, 0]):  # one-frame clips and images
            got = tiny.embed_vision(x).numpy()
            assert got.shape == (2, 32)
            assert rel_error(got, want) <= bound


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
    # Anchor: upstream seeds with torch.manual_seed(0) and builds the vision Conv3d first, so its
    # tiny_state holds that first draw; seed=0 must reproduce it (seed s means torch.manual_seed(s),
    # not another generator or offset). The draw maps the generator's integers to
    # from + r·(to − from) in float32; CPU code paths differ only in fusing that multiply-add (the
    # product, up to twice the bound 1/sqrt(fan_in), rounds by ≤ 1 ulp of the bound, the sum by
    # ≤ ½, the fused form by ≤ ½), so values may differ by 2 ulps of the bound; another seed moves
    # them by ~the bound. The constant initialisations (LayerNorms, zero biases, the logit scale)
    # must equal upstream's for any seed.
    first_draw = "modality_preprocessors.vision.rgbt_stem.proj.1.weight"
    random = {k for k, v in STATE.items() if v.std() > 0}
    rng_before = torch.random.get_rng_state()
    zero, a, b, c = (build_imagebind("tiny", seed=s).state_dict() for s in (0, 7, 7, 8))
    assert torch.equal(torch.random.get_rng_state(), rng_before)  # the global generator is left alone
    assert set(zero) == set(STATE) and first_draw in random
    bound = np.float32(1 / np.sqrt(np.prod(STATE[first_draw].shape[1:])))  # kaiming_uniform(a=√5)
    assert np.abs(STATE[first_draw]).max() <= bound
    assert np.abs(zero[first_draw].numpy() - STATE[first_draw]).max() <= 2 * np.spacing(bound)
    assert all(np.array_equal(t[k].numpy(), STATE[k]) for t in (zero, a, c) for k in set(STATE) - random)
    assert all(torch.equal(a[k], b[k]) for k in a)  # same seed: the same model
    assert all(not torch.equal(a[k], c[k]) for k in random)  # another seed: every random tensor differs


def test_huge_architecture_matches_official_keys() -> None:
    ref = json.loads((MODEL_FIXTURES / "huge_keys.json").read_text())
    with torch.device("meta"):  # 719M parameters without allocating 2.9 GB
        model = build_imagebind("huge")
    state = model.state_dict()
    assert_layout(state, ref["keys"])
    assert len(state) == ref["num_keys"] == 569
    assert sum(p.numel() for p in model.parameters()) == ref["num_parameters"] == 719_065_088
    assert [name for name, _ in model.named_buffers()] == ref["buffers"]
    assert model.out_dim == 1024

    audio = model.embed_audio(torch.empty(2, 1, 128, 204, device="meta"))
    vision = model.embed_vision(torch.empty(3, 3, 2, 224, 224, device="meta"))
    assert audio.shape == (2, 1024) and vision.shape == (3, 1024)
