"""ImageBind's text tower (frozen), for putting text queries in the same space as audio and vision.

A module of its own, separate from :class:`~mvbind.pipeline.encoders.imagebind.model.ImageBindAV`:
the audio + vision path (extraction, the library index) never imports, builds or loads it, so
those jobs keep their memory (the text half of the checkpoint is 354M parameters, 1.4 GB) and need
no tokenizer dependencies. Both read the same ``imagebind_huge.pth``; each loads only its keys.

The module tree mirrors upstream ``ImageBindModel``'s text entries, so the official checkpoint's
295 text keys load with ``load_state_dict(strict=True)``::

    modality_preprocessors.text   token embedding (49408 x D) + learned positions (77 x D); the
                                  causal mask as a buffer (``mask``, 0 / -inf), as upstream stores it
    modality_trunks.text          pre-norm transformer, causal attention, no LayerNorm before the
                                  blocks, no key/value bias tokens, no stochastic depth
    modality_heads.text           the token at ``tokens.argmax(-1)`` (the end-of-text token, the
                                  largest id) -> LayerNorm (eps 1e-6) -> Linear (no bias)
    modality_postprocessors.text  L2 normalise x exp(log_logit_scale), clipped at 100

The logit scale is a learned parameter upstream, so its value comes from the checkpoint (the
official one's is not the initial 1/0.07); nothing here hard-codes it. The blocks, attention,
LayerNorm scale and normalisation are :mod:`model`'s, shared with the audio and vision towers.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from mvbind.pipeline.encoders.imagebind.model import LogitScale, Normalize, Trunk, seeded
from mvbind.pipeline.encoders.imagebind.tokenizer import CONTEXT_LENGTH, VOCAB_SIZE, tokenize

_HUGE: dict[str, Any] = {"out_embed_dim": 1024, "text_embed_dim": 1024, "text_num_blocks": 24, "text_num_heads": 16}
# The text part of the reference fixture's tiny_text_config.json.
_TINY: dict[str, Any] = {"out_embed_dim": 32, "text_embed_dim": 64, "text_num_blocks": 2, "text_num_heads": 4}
_ARCHS: dict[str, dict[str, Any]] = {"huge": _HUGE, "tiny": _TINY}


def text_config(arch: str) -> dict[str, Any]:
    """Constructor settings of a named text tower: "huge" (the released model) or "tiny" (the fixture's)."""
    try:
        return dict(_ARCHS[arch])
    except KeyError:
        raise ValueError(f"unknown ImageBind text architecture {arch!r}; valid: {', '.join(_ARCHS)}") from None


def eos_index(tokens: Tensor) -> Tensor:
    """The position the head reads: the end-of-text token, found as upstream does (the largest id)."""
    return tokens.argmax(dim=-1)


class TextPreprocessor(nn.Module):
    """Token ids (N, 77) -> token embeddings + positions (N, 77, D); holds the causal mask."""

    def __init__(self, dim: int, vocab_size: int = VOCAB_SIZE, context_length: int = CONTEXT_LENGTH) -> None:
        super().__init__()
        self.token_embedding = nn.Embedding(vocab_size, dim)
        self.pos_embed = nn.Parameter(torch.empty(1, context_length, dim))
        # A persistent buffer, as upstream: the checkpoint holds it, and strict loading expects it.
        self.register_buffer("mask", torch.full((context_length, context_length), float("-inf")).triu(1))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Upstream's (OpenCLIP) init: N(0, 0.02) token embeddings, N(0, 0.01) positions."""
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.pos_embed, std=0.01)

    def forward(self, tokens: Tensor) -> Tensor:
        return self.token_embedding(tokens) + self.pos_embed


class SelectEOSAndProject(nn.Module):
    """Upstream's text head: the end-of-text token of each row -> LayerNorm -> Linear (keys ``proj.0``, ``proj.1``)."""

    def __init__(self, dim: int, out_dim: int) -> None:
        super().__init__()
        self.proj = nn.Sequential(nn.LayerNorm(dim, eps=1e-6), nn.Linear(dim, out_dim, bias=False))

    def forward(self, x: Tensor, eos: Tensor) -> Tensor:
        return self.proj(x[torch.arange(x.shape[0], device=x.device), eos])


class ImageBindText(nn.Module):
    """ImageBind's text encoder with upstream's parameter layout (see the module docstring).

    Keyword arguments are those of upstream ``ImageBindModel`` that concern text; the defaults
    are ``imagebind_huge``'s. Build it with :func:`build_text_tower`.
    """

    def __init__(
        self,
        *,
        out_embed_dim: int = 1024,
        text_embed_dim: int = 1024,
        text_num_blocks: int = 24,
        text_num_heads: int = 16,
    ) -> None:
        super().__init__()
        self.out_dim = out_embed_dim
        self.context_length = CONTEXT_LENGTH
        self.modality_preprocessors = nn.ModuleDict({"text": TextPreprocessor(text_embed_dim)})
        self.modality_trunks = nn.ModuleDict(
            {
                "text": Trunk(
                    text_embed_dim, text_num_blocks, text_num_heads, pre_ln=False, add_bias_kv=False, drop_path=0.0
                )
            }
        )
        self.modality_heads = nn.ModuleDict({"text": SelectEOSAndProject(text_embed_dim, out_embed_dim)})
        self.modality_postprocessors = nn.ModuleDict(
            {"text": nn.Sequential(Normalize(), LogitScale(1 / 0.07, max_scale=100.0, learnable=True))}
        )

    def encode(self, tokens: Tensor, *, postprocess: bool = True) -> Tensor:
        """Token ids (N, 77) -> (N, out_dim): preprocessor -> causal trunk -> head (-> postprocessor)."""
        if tokens.ndim != 2 or tokens.shape[1] != self.context_length or tokens.dtype.is_floating_point:
            raise ValueError(
                f"text input must be integer token ids of shape (N, {self.context_length}), "
                f"got {tuple(tokens.shape)} {tokens.dtype}"
            )
        pre = self.modality_preprocessors["text"]
        tokens = tokens.to(device=pre.pos_embed.device, dtype=torch.long)
        x = self.modality_trunks["text"](pre(tokens), pre.mask)
        out = self.modality_heads["text"](x, eos_index(tokens))
        return self.modality_postprocessors["text"](out) if postprocess else out

    def embed_text(self, texts: str | Sequence[str], *, postprocess: bool = True) -> Tensor:
        """Tokenize (upstream's tokenizer) and encode: (N, out_dim), rows of norm exp(log_logit_scale) when
        post-processed, as upstream's ``model({"text": ...})``."""
        return self.encode(torch.from_numpy(tokenize(texts)), postprocess=postprocess)

    def forward(self, tokens: Tensor, *, postprocess: bool = True) -> Tensor:
        return self.encode(tokens, postprocess=postprocess)


def build_text_tower(arch: str = "huge", seed: int | None = None) -> ImageBindText:
    """Build the text tower of a named architecture ("huge" or "tiny").

    With ``seed`` the random initialisation is reproducible (the global RNG is left untouched).
    Respects an active ``torch.device(...)`` context, e.g. ``meta`` to build without allocating.
    """
    config = text_config(arch)
    return seeded(lambda: ImageBindText(**config), seed)


def load_text_tower(
    weights: str | os.PathLike[str] | None = None, *, download: bool = True, progress: bool = True
) -> ImageBindText:
    """The pretrained huge text tower from ``imagebind_huge.pth``, frozen, in eval mode, on the CPU.

    ``weights`` is resolved like ``encoder.weights`` (``None``/"" = the default location, downloaded
    if absent). The model is built on the ``meta`` device and receives the checkpoint's tensors
    (memory-mapped), so no random init is computed and the other modalities are never read.
    """
    from mvbind.pipeline.encoders.imagebind.weights import load_text_weights, resolve_weights

    path = resolve_weights(weights, download=download, progress=progress)
    with torch.device("meta"):
        model = build_text_tower("huge")
    load_text_weights(model, path)
    return model.eval().requires_grad_(False)
