"""ImageBind's text tower against the reference fixtures of the original code (fixtures/text/).

tiny_text_state.npz is a randomly initialised upstream ImageBindModel (text 64-d, 2 blocks, 4 heads,
out 32-d) whose text logit scale was set to log 42, so a tower that ignores the checkpoint's scale
is off by a factor; tiny_text_expected.npz holds upstream's head output and embedding of the
tokens in tokens.npz.

Two anchors, as for audio and vision (test_imagebind_model.py): upstream's outputs, and the float64
numpy forward of ref_imagebind.py (itself checked against upstream here). The bound that must hold
on every CPU code path is the float32 rounding budget relative to the row norm (~2300 u for this
tower, ~1.4e-4). Besides, the head must lie within 1e-5 (max abs) of upstream's, and so must the
embedding's direction (the embedding over its scale 42): the scaled embedding itself is not held
to 1e-5 absolute, since its entries reach ~20 and upstream's own float32 result is already 1e-5
away from the exact one (9.7e-6 against the float64 forward).
"""
from __future__ import annotations

import copy
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from mvbind.errors import MvbindError
from mvbind.pipeline.encoders.imagebind.text import (
    ImageBindText,
    build_text_tower,
    eos_index,
    load_text_tower,
    text_config,
)
from mvbind.pipeline.encoders.imagebind.weights import WEIGHTS_FILENAME, load_text_weights
from tests.ref_imagebind import U32, U64, assert_layout, postprocess, rel_error, rounding_budget, text_head

ROOT = Path(__file__).resolve().parents[1]
TEXT_FIXTURES = Path(__file__).parent / "fixtures" / "text"
FULL_STATE = dict(np.load(TEXT_FIXTURES / "tiny_text_state.npz"))  # vision + audio + text, as upstream saves
STATE = {k: v for k, v in FULL_STATE.items() if k.split(".")[1] == "text"}
EXPECTED = np.load(TEXT_FIXTURES / "tiny_text_expected.npz")
TOKENS = np.load(TEXT_FIXTURES / "tokens.npz")
TEXTS: list[str] = json.loads(bytes(TOKENS["texts_json"]))
SCALE_KEY = "modality_postprocessors.text.1.log_logit_scale"
BOUND = 2 * rounding_budget(STATE, "text") * U32  # two float32 forwards, relative to the row norm
TOL = 1e-5  # max abs, on the head and on the embedding's direction
pytestmark = pytest.mark.usefixtures("one_thread")  # a tiny model: a second thread only adds hand-offs


def tiny_tower(state: dict[str, np.ndarray] = STATE) -> ImageBindText:
    """The tiny text tower with `state` loaded by strict load_state_dict."""
    model = build_text_tower("tiny", seed=0).eval()
    model.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, strict=True)
    return model


def max_abs(got: torch.Tensor | np.ndarray, want: np.ndarray) -> float:
    return float(np.abs(np.asarray(got, np.float64) - np.asarray(want, np.float64)).max())


@pytest.fixture(scope="module")
def tiny() -> ImageBindText:
    return tiny_tower()


@pytest.fixture(scope="module")
def outputs(tiny: ImageBindText) -> dict[str, torch.Tensor]:
    tokens = torch.from_numpy(TOKENS["tokens"])
    with torch.inference_mode():
        return {
            "text_head": tiny.encode(tokens, postprocess=False),
            "text_embedding": tiny(tokens),
            "embed_text": tiny.embed_text(TEXTS),
            "embed_text_head": tiny.embed_text(TEXTS, postprocess=False),
        }


def test_tiny_config_matches_fixture() -> None:
    kwargs = json.loads((TEXT_FIXTURES / "tiny_text_config.json").read_text())["kwargs"]
    config = text_config("tiny")
    assert config == {k: kwargs[k] for k in config}
    assert set(text_config("huge")) == set(config)


def test_unknown_arch_names_valid_ones() -> None:
    with pytest.raises(ValueError, match="huge, tiny"):
        text_config("small")


def test_fixture_text_keys_are_the_tiny_towers() -> None:
    # Strict loading (tiny_tower) would raise on any difference; this says which keys differ.
    model = build_text_tower("tiny", seed=0)
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert got == {k: v.shape for k, v in STATE.items()}
    assert len(got) == 31


SCALE = {"text_head": 1.0, "text_embedding": 42.0}


@pytest.mark.parametrize("key", ["text_head", "text_embedding"])
def test_parity_with_upstream(outputs: dict[str, torch.Tensor], key: str) -> None:
    got, want = outputs[key].numpy(), EXPECTED[key]
    assert got.shape == want.shape == (8, 32)
    err, ratio = max_abs(got, want), rel_error(got, want) / BOUND
    print(f"{key}: max abs diff {err:.3g}, error / bound {ratio:.3g}")
    assert ratio <= 1.0
    assert err / SCALE[key] <= TOL


def test_embed_text_from_strings_matches_upstream(outputs: dict[str, torch.Tensor]) -> None:
    # Strings -> our tokenizer -> tower: upstream's load_and_transform_text then model({"text": ...}).
    for ours, key in (("embed_text", "text_embedding"), ("embed_text_head", "text_head")):
        assert rel_error(outputs[ours].numpy(), EXPECTED[key]) <= BOUND
        assert max_abs(outputs[ours].numpy(), EXPECTED[key]) / SCALE[key] <= TOL
    torch.testing.assert_close(outputs["embed_text"].norm(dim=-1), torch.full((8,), 42.0))


@pytest.fixture(scope="module")
def reference() -> np.ndarray:
    """Head outputs of the float64 numpy forward (ref_imagebind.py)."""
    return text_head(STATE, TOKENS["tokens"])


def test_float64_reference_matches_upstream(reference: np.ndarray) -> None:
    # Validates the reference: upstream's float32 outputs lie within one float32 budget of it.
    for key, ref in (("text_head", reference), ("text_embedding", postprocess(reference, STATE, "text"))):
        ratio = rel_error(EXPECTED[key], ref) / (BOUND / 2)
        print(f"{key}: upstream vs float64 reference, error / bound {ratio:.3g}")
        assert ratio <= 1.0


def test_float64_forward_matches_reference(tiny: ImageBindText, reference: np.ndarray) -> None:
    # float64 resolves what float32 cannot (a LayerNorm eps, a GELU approximation, a mask off by one
    # position on padding): the same budget times 2**-53.
    model = copy.deepcopy(tiny).double()
    with torch.inference_mode():
        got = model.encode(torch.from_numpy(TOKENS["tokens"]), postprocess=False)
    assert got.dtype == torch.float64
    ratio = rel_error(got.numpy(), reference) / (BOUND / U32 * U64)
    print(f"text: float64 forward vs float64 reference, error / bound {ratio:.3g}")
    assert ratio <= 1.0


def test_eos_index_matches_upstream() -> None:
    got = eos_index(torch.from_numpy(TOKENS["tokens"]))
    np.testing.assert_array_equal(got.numpy(), EXPECTED["eos_index"])
    assert (TOKENS["tokens"][np.arange(8), EXPECTED["eos_index"]] == 49407).all()


def test_logit_scale_comes_from_the_checkpoint() -> None:
    # The fixture's scale is 42; another stored scale must scale the embedding with it, and the
    # clip at 100 applies to the stored value too.
    tokens = torch.from_numpy(TOKENS["tokens"])
    for scale, applied in ((7.0, 7.0), (500.0, 100.0)):
        model = tiny_tower({**STATE, SCALE_KEY: np.array(math.log(scale), dtype=np.float32)})
        with torch.inference_mode():
            got = model(tokens)
        torch.testing.assert_close(got.norm(dim=-1), torch.full((8,), applied))
        assert rel_error(got.numpy(), EXPECTED["text_embedding"] * (applied / 42.0)) <= BOUND
    assert isinstance(tiny_tower().modality_postprocessors["text"][1].log_logit_scale, torch.nn.Parameter)


def test_attention_is_causal(tiny: ImageBindText) -> None:
    # The head reads the end-of-text token; with the causal mask nothing after it (the padding)
    # can reach it, while every token before it does.
    tokens = torch.from_numpy(TOKENS["tokens"][:4].copy())
    eos = eos_index(tokens)
    noisy = tokens.clone()
    g = torch.Generator().manual_seed(0)
    for row, e in enumerate(eos.tolist()):
        noisy[row, e + 1 :] = torch.randint(1, 49406, (76 - e,), generator=g)  # smaller ids: eos stays
    assert torch.equal(eos_index(noisy), eos) and not torch.equal(noisy, tokens)
    earlier = tokens.clone()
    earlier[:, 1] = 320  # "a" as the first word
    with torch.inference_mode():
        base, after, before = (tiny.encode(t, postprocess=False) for t in (tokens, noisy, earlier))
    assert rel_error(after.numpy(), base.numpy()) <= BOUND
    assert (np.abs(before.numpy() - base.numpy()).max(-1) > 1e-2).all()
    mask = STATE["modality_preprocessors.text.mask"]  # upstream's: 0 on and below the diagonal, -inf above
    np.testing.assert_array_equal(build_text_tower("tiny").modality_preprocessors["text"].mask.numpy(), mask)


def test_bad_token_input_is_reported(tiny: ImageBindText) -> None:
    with pytest.raises(ValueError, match=r"\(N, 77\)"):
        tiny.encode(torch.zeros(2, 76, dtype=torch.long))
    with pytest.raises(ValueError, match="integer token ids"):
        tiny.encode(torch.zeros(2, 77))


def test_huge_architecture_matches_official_keys() -> None:
    ref = json.loads((TEXT_FIXTURES / "huge_text_keys.json").read_text())
    with torch.device("meta"):  # 354M parameters without allocating 1.4 GB
        model = build_text_tower("huge")
    state = model.state_dict()
    assert_layout(state, ref["keys"])
    assert len(state) == ref["count"] == 295
    # The fixture counts every state_dict entry, the causal mask (77 x 77 buffer) included.
    assert sum(t.numel() for t in state.values()) == ref["params"] == 354_038_570
    assert [name for name, _ in model.named_buffers()] == ["modality_preprocessors.text.mask"]
    assert sum(p.numel() for p in model.parameters()) == 354_038_570 - 77 * 77
    assert model.out_dim == 1024
    assert model.encode(torch.zeros(2, 77, dtype=torch.long)).shape == (2, 1024)


# ---------------------------------------------------------------------------- checkpoint loading


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The fixture's whole upstream state_dict (vision, audio and text) saved as a checkpoint file."""
    path = tmp_path_factory.mktemp("ckpt") / WEIGHTS_FILENAME
    torch.save({k: torch.from_numpy(v) for k, v in FULL_STATE.items()}, path)
    return path


def test_load_text_weights_from_a_full_checkpoint(checkpoint: Path) -> None:
    with torch.device("meta"):
        model = build_text_tower("tiny")
    load_text_weights(model, checkpoint)  # strict: the vision and audio entries are left out
    weight = model.modality_preprocessors["text"].token_embedding.weight
    assert not weight.is_meta
    # Memory-mapped: the tower's tensors live in a mapping of the file, not in copies read into memory.
    assert _mapped_file(weight.data_ptr()) == checkpoint.resolve()
    with torch.inference_mode():
        got = model.eval()(torch.from_numpy(TOKENS["tokens"]))
    assert rel_error(got.numpy(), EXPECTED["text_embedding"]) <= BOUND


def _mapped_file(address: int) -> Path | None:
    """The file mapped at `address` in this process (Linux /proc/self/maps), None if anonymous memory."""
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split(maxsplit=5)
        start, end = (int(x, 16) for x in fields[0].split("-"))
        if start <= address < end:
            return Path(fields[5]).resolve() if len(fields) == 6 and fields[5].startswith("/") else None
    return None


def _save(tmp_path: Path, state: dict[str, np.ndarray]) -> Path:
    path = tmp_path / WEIGHTS_FILENAME
    torch.save({k: torch.from_numpy(v) for k, v in state.items()}, path)
    return path


def test_load_text_weights_errors_are_one_line(tmp_path: Path) -> None:
    missing = "modality_trunks.text.blocks.1.mlp.fc2.bias"
    cases = [
        ({k: v for k, v in FULL_STATE.items() if k != missing}, f"1 missing keys, e.g. {missing}"),
        ({**FULL_STATE, "modality_trunks.text.blocks.2.norm_1.bias": np.zeros(64, np.float32)},
         "1 unexpected keys, e.g. modality_trunks.text.blocks.2.norm_1.bias"),
        ({**FULL_STATE, "modality_preprocessors.text.pos_embed": np.zeros((1, 77, 48), np.float32)},
         "modality_preprocessors.text.pos_embed has shape (1, 77, 48), expected (1, 77, 64)"),
    ]
    for state, needle in cases:
        path = _save(tmp_path, state)
        with pytest.raises(MvbindError) as err:
            load_text_weights(build_text_tower("tiny", seed=0), path)
        msg = str(err.value)
        assert "\n" not in msg and needle in msg and str(path) in msg


def test_load_text_tower_refuses_a_checkpoint_of_another_size(checkpoint: Path) -> None:
    # load_text_tower builds the huge tower (24 blocks): the tiny checkpoint (2) fails, in one line.
    with pytest.raises(MvbindError) as err:
        load_text_tower(checkpoint, download=False)
    msg = str(err.value)
    assert "\n" not in msg and "does not fit the ImageBind text tower (264 missing keys" in msg


# ---------------------------------------------------------------------------- separation


def test_audio_vision_path_never_builds_the_text_tower() -> None:
    # A fresh interpreter runs the imagebind encoder's audio + vision path (settings, embedder
    # construction, embedding) and reports which of our text modules got imported: none may be.
    code = """
import sys, torch
from mvbind.pipeline.config import load_config
from mvbind.pipeline.encoders import get_encoder
from mvbind.pipeline.encoders.base import prepared

config = load_config(overrides={"encoder.arch": "tiny", "encoder.weights": "random", "encoder.device": "cpu"})
backend = get_encoder("imagebind")
backend.settings(config)
embedder = backend.embedder(config, progress=False)
out = embedder.embed([prepared(2.0, audio=torch.zeros(3, 1, 128, 204), video=torch.zeros(2, 3, 2, 224, 224))])
assert out["audio"][0].shape == (3, 32) and out["video"][0].shape == (2, 32)
assert not any(key.split(".")[1] == "text" for key in embedder.model.state_dict())
print(",".join(sorted(m for m in sys.modules if m.startswith("mvbind.pipeline.encoders.imagebind."))))
print(",".join(sorted(m for m in ("ftfy", "regex", "open_clip") if m in sys.modules)))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr
    ours, third_party = done.stdout.splitlines()
    assert "mvbind.pipeline.encoders.imagebind.model" in ours.split(",")  # the check sees imports
    assert "mvbind.pipeline.encoders.imagebind.text" not in ours.split(",")
    assert "mvbind.pipeline.encoders.imagebind.tokenizer" not in ours.split(",")
    assert third_party == ""
