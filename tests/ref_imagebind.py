"""A float64 numpy forward of ImageBind's audio, vision and text towers, written from the reference README.

Independent of pipeline.imagebind: it reads the upstream state_dict arrays (tiny_state.npz) by
their upstream key names and follows upstream's module order (README "Model" 8-10):

* vision: PadIm2Video (a single frame or an image is repeated to 2 frames) -> Conv3d patches
  (no bias) -> CLS token + positions -> LayerNorm (eps 1e-6) -> blocks;
* audio: Conv2d patches (kernel 16, stride 10, no bias) -> LayerNorm (eps 1e-5) -> CLS token +
  positions -> blocks whose attention appends one learned key/value token (``add_bias_kv``);
* block: x + attn(LN(x)), then x + MLP(LN(x)) (LN eps 1e-6, GELU with erf); multi-head attention
  as ``nn.MultiheadAttention`` (packed in-projection, softmax(q k^T / sqrt(d_head)) v, out-projection);
* head: LayerNorm (eps 1e-6) -> token 0 -> Linear without bias; postprocessor: L2 normalise
  (audio: times exp(log_logit_scale), clipped at 100).
* text (README 12): token embedding + positions -> blocks with a causal mask (no LayerNorm before
  them, no key/value token) -> LayerNorm -> the token at ``tokens.argmax(-1)`` -> Linear without
  bias; postprocessor: L2 normalise times exp(log_logit_scale), clipped at 100.

Everything is float64, so its own rounding (~1e-16 relative) is negligible next to float32's.
The matrix products are small: BLAS runs on one thread (threads only contend on a busy machine).

`rounding_budget` is the error model the tests judge float32 (and float64) forwards by. A sum of n
products computed in floating point, in any order, is off by at most about n·u times the sum of
the magnitudes of its terms (u = 2**-24 for float32; Higham, "Accuracy and Stability of Numerical
Algorithms", 3.1). Along the path from the input to one output row the towers do a fixed list of
sums (the patch projection, LayerNorm means and variances, q/k/v, attention scores, the softmax
sum, weights · values, the output projection, the two MLP layers, the head, the final norm) and a
few elementwise roundings; the budget is their lengths added up. The towers are well conditioned
(every residual branch and the head start with a LayerNorm, so errors are not amplified along the
way), hence one float32 forward lies within budget·u·||row|| of the exact result and two float32
implementations within twice that, on any summation order, i.e. any CPU code path. For the tiny
towers the budget is ~2800 (audio) and ~4300 (vision); observed errors are a few u·||row||, so the
bound is loose, but a structural bug moves rows by 1e-2 .. 1 relative, far above it. Subtle bugs
(a LayerNorm eps, a GELU approximation) are below any honest float32 bound: the tests catch them
in float64, where the same budget times 2**-53 is ~1e-12 relative.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from scipy.special import erf
from threadpoolctl import threadpool_limits  # via librosa -> scikit-learn

Weights = dict[str, np.ndarray]
U32, U64 = 2.0**-24, 2.0**-53  # unit round-off


def rel_error(got: np.ndarray, want: np.ndarray, norm: float | None = None) -> float:
    """Largest |got - want| of a row over the row's norm (the norm of `want`'s row unless given)."""
    err = np.abs(np.asarray(got, np.float64) - np.asarray(want, np.float64)).max(-1)
    return float((err / (np.linalg.norm(np.asarray(want, np.float64), axis=-1) if norm is None else norm)).max())


def _w(state: Weights, key: str) -> np.ndarray:
    return np.asarray(state[key], dtype=np.float64)


def _layer_norm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float) -> np.ndarray:
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * weight + bias


def _attention(x: np.ndarray, state: Weights, prefix: str, heads: int, bias_kv: bool, causal: bool = False
               ) -> np.ndarray:
    n, length, dim = x.shape
    qkv = x @ _w(state, prefix + "in_proj_weight").T + _w(state, prefix + "in_proj_bias")
    q, k, v = np.split(qkv, 3, axis=-1)
    if bias_kv:
        k = np.concatenate([k, np.broadcast_to(_w(state, prefix + "bias_k"), (n, 1, dim))], axis=1)
        v = np.concatenate([v, np.broadcast_to(_w(state, prefix + "bias_v"), (n, 1, dim))], axis=1)
    hd = dim // heads

    def split(t: np.ndarray) -> np.ndarray:  # (n, L, dim) -> (n, heads, L, hd), contiguous for BLAS
        return np.ascontiguousarray(t.reshape(n, t.shape[1], heads, hd).transpose(0, 2, 1, 3))

    q, k, v = split(q), split(k), split(v)
    scores = q @ np.ascontiguousarray(k.transpose(0, 1, 3, 2)) / math.sqrt(hd)
    if causal:  # a query sees itself and the keys before it
        scores = np.where(np.tri(length, k.shape[2], dtype=bool), scores, -np.inf)
    scores = np.exp(scores - scores.max(-1, keepdims=True))
    out = (scores / scores.sum(-1, keepdims=True)) @ v
    out = out.transpose(0, 2, 1, 3).reshape(n, length, dim)
    return out @ _w(state, prefix + "out_proj.weight").T + _w(state, prefix + "out_proj.bias")


def _trunk(x: np.ndarray, state: Weights, modality: str, blocks: int, heads: int, bias_kv: bool,
           causal: bool = False) -> np.ndarray:
    for b in range(blocks):
        p = f"modality_trunks.{modality}.blocks.{b}."
        h = _layer_norm(x, _w(state, p + "norm_1.weight"), _w(state, p + "norm_1.bias"), 1e-6)
        x = x + _attention(h, state, p + "attn.", heads, bias_kv, causal)
        h = _layer_norm(x, _w(state, p + "norm_2.weight"), _w(state, p + "norm_2.bias"), 1e-6)
        h = h @ _w(state, p + "mlp.fc1.weight").T + _w(state, p + "mlp.fc1.bias")
        h = 0.5 * h * (1.0 + erf(h / math.sqrt(2.0)))
        x = x + h @ _w(state, p + "mlp.fc2.weight").T + _w(state, p + "mlp.fc2.bias")
    return x


def _tokens(patches: np.ndarray, state: Weights, modality: str) -> np.ndarray:
    p = f"modality_preprocessors.{modality}."
    cls = np.broadcast_to(_w(state, p + "cls_token"), (patches.shape[0], 1, patches.shape[2]))
    return np.concatenate([cls, patches], axis=1) + _w(state, p + "pos_embedding_helper.pos_embed")


def _head(x: np.ndarray, state: Weights, modality: str) -> np.ndarray:
    p = f"modality_heads.{modality}."
    x = _layer_norm(x, _w(state, p + "0.weight"), _w(state, p + "0.bias"), 1e-6)[:, 0]
    return x @ _w(state, p + "2.weight").T


def _num_blocks(state: Weights, modality: str) -> int:
    return len({k.split(".")[3] for k in state if k.startswith(f"modality_trunks.{modality}.blocks.")})


@threadpool_limits.wrap(limits=1, user_api="blas")
def vision_head(state: Weights, x: np.ndarray, heads: int = 4) -> np.ndarray:
    """Head output (N, out) of vision clips (N, 3, T, 224, 224) with T in {1, 2}, or images (N, 3, 224, 224)."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim == 4:
        x = x[:, :, None]
    if x.shape[2] == 1:  # PadIm2Video(ntimes=2): repeat the single frame
        x = np.repeat(x, 2, axis=2)
    weight = _w(state, "modality_preprocessors.vision.rgbt_stem.proj.1.weight")  # (D, 3, 2, 14, 14)
    dim, _, kt, kh, kw = weight.shape
    n, c, t, h, w = x.shape
    blocks = x.reshape(n, c, t // kt, kt, h // kh, kh, w // kw, kw).transpose(0, 2, 4, 6, 1, 3, 5, 7)
    patches = blocks.reshape(n, -1, c * kt * kh * kw) @ weight.reshape(dim, -1).T  # tokens in (t, h, w) order
    x = _tokens(patches, state, "vision")
    p = "modality_trunks.vision.pre_transformer_layer.0."
    x = _layer_norm(x, _w(state, p + "weight"), _w(state, p + "bias"), 1e-6)
    x = _trunk(x, state, "vision", _num_blocks(state, "vision"), heads, bias_kv=False)
    return _head(x, state, "vision")


@threadpool_limits.wrap(limits=1, user_api="blas")
def audio_head(state: Weights, x: np.ndarray, heads: int = 4, kernel: int = 16, stride: int = 10) -> np.ndarray:
    """Head output (N, out) of mel spectrograms (N, 1, 128, 204)."""
    x = np.asarray(x, dtype=np.float64)[:, 0]
    weight = _w(state, "modality_preprocessors.audio.rgbt_stem.proj.weight")  # (D, 1, k, k)
    dim = weight.shape[0]
    windows = sliding_window_view(x, (kernel, kernel), axis=(1, 2))[:, ::stride, ::stride]  # (N, h, w, k, k)
    patches = windows.reshape(x.shape[0], -1, kernel * kernel) @ weight.reshape(dim, -1).T
    p = "modality_preprocessors.audio.rgbt_stem.norm_layer."
    patches = _layer_norm(patches, _w(state, p + "weight"), _w(state, p + "bias"), 1e-5)
    x = _tokens(patches, state, "audio")
    x = _trunk(x, state, "audio", _num_blocks(state, "audio"), heads, bias_kv=True)
    return _head(x, state, "audio")


@threadpool_limits.wrap(limits=1, user_api="blas")
def text_head(state: Weights, tokens: np.ndarray, heads: int = 4) -> np.ndarray:
    """Head output (N, out) of token ids (N, 77)."""
    p = "modality_preprocessors.text."
    x = _w(state, p + "token_embedding.weight")[tokens] + _w(state, p + "pos_embed")
    x = _trunk(x, state, "text", _num_blocks(state, "text"), heads, bias_kv=False, causal=True)
    h = "modality_heads.text.proj."
    x = _layer_norm(x[np.arange(len(tokens)), tokens.argmax(-1)], _w(state, h + "0.weight"), _w(state, h + "0.bias"),
                    1e-6)
    return x @ _w(state, h + "1.weight").T


def postprocess(head: np.ndarray, state: Weights, modality: str) -> np.ndarray:
    """L2 normalise; audio and text also times exp(log_logit_scale) clipped at 100."""
    out = head / np.linalg.norm(head, axis=-1, keepdims=True)
    if modality in ("audio", "text"):
        out = out * min(math.exp(float(state[f"modality_postprocessors.{modality}.1.log_logit_scale"])), 100.0)
    return out


def rounding_budget(state: Weights, modality: str, heads: int = 4) -> int:
    """Sum of the lengths of the reductions (plus elementwise roundings) behind one output row."""
    p = f"modality_preprocessors.{modality}."
    if modality == "text":  # an exact table lookup instead of a stem; no extra LayerNorm; no key/value token
        pos = state[p + "pos_embed"]
        stem, extra_norms, extra_keys = 0, 0, 0
        out = state["modality_heads.text.proj.1.weight"].shape[0]
    else:
        pos = state[p + "pos_embedding_helper.pos_embed"]
        stem_key = p + ("rgbt_stem.proj.1.weight" if modality == "vision" else "rgbt_stem.proj.weight")
        stem = int(np.prod(state[stem_key].shape[1:]))
        extra_norms = 1  # vision: before the blocks; audio: on the patches
        extra_keys = int(modality == "audio")  # the learned key/value token
        out = state[f"modality_heads.{modality}.2.weight"].shape[0]
    tokens, dim = pos.shape[1], pos.shape[-1]
    keys = tokens + extra_keys  # text: a causal query sees at most all tokens
    layer_norm = 2 * dim + 4  # mean and variance sums; subtract, rsqrt, scale, shift
    attention = 3 * dim + dim // heads + 2 * keys + dim  # q/k/v, scores, softmax sum, weights · values, out proj
    block = 2 * layer_norm + attention + dim + 4 * dim + 8  # fc1 (dim), fc2 (4·dim), adds, exp, GELU
    # stem, the extra LayerNorm, position add, blocks, head LayerNorm and Linear, L2 norm (sum of out
    # squares, divide, scale).
    return stem + extra_norms * layer_norm + 1 + _num_blocks(state, modality) * block + layer_norm + dim + out + 3


def assert_layout(state: Mapping[str, Any], entries: list[dict[str, Any]]) -> None:
    """A state_dict has exactly the keys, order, shapes and dtypes of a fixture's key list
    ({"key", "shape", "dtype"} entries, as upstream's ``state_dict()`` lists them)."""
    expected = {e["key"]: (tuple(e["shape"]), e["dtype"]) for e in entries}
    got = {k: (tuple(t.shape), str(t.dtype).removeprefix("torch.")) for k, t in state.items()}
    assert sorted(set(expected) - set(got)) == [] and sorted(set(got) - set(expected)) == []
    assert got == expected and list(got) == list(expected)
