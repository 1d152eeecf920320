"""Pooling per-clip embeddings into one vector per item, then L2-normalising.

The cache keeps every clip (ImageBind audio: 3 clips of norm ~20; vision: 5 clips x 3 crops of
norm 1), so pooling is a stage-two choice. Every pooled vector is L2-normalised, which removes
the modalities' different scales.

- mean: the average of the clips (what ImageBind itself does with 5-D input). It has no
  parameters, so training pools once up front (`mean_pool`) and feeds (n, dim) to the model.
- attention: softmax weights over clips from a learned linear score of each (normalised)
  clip. The score starts at zero, so at initialisation it *is* the mean.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mvbind.pipeline.binding.fastops import masked_clip_sum


def mean_pool(clips: np.ndarray, *, chunk: int = 4096) -> np.ndarray:
    """(n, clips, dim) float16/32 -> (n, dim) float32 L2-normalised mean, in row chunks.

    Chunked so a 100 000 x 15 x 1024 fp16 array never becomes a float32 copy. Rows whose
    mean is zero stay zero; rows with nan/inf stay non-finite (the caller reports them).
    """
    n, _, dim = clips.shape
    out = np.empty((n, dim), np.float32)
    for start in range(0, n, chunk):
        block = clips[start:start + chunk].astype(np.float32).mean(axis=1)
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            norm = np.sqrt(np.einsum("nd,nd->n", block, block))[:, None]
            out[start:start + chunk] = np.where(norm > 0, block / np.where(norm > 0, norm, 1), block)
    return out


class MeanPool(nn.Module):
    """Mean over clips, then L2 normalisation. (n, dim) input is taken as already pooled.

    `mask` (n, clips) bool keeps only the True clips of each row (training's `clip_dropout`); every row
    needs one. The normalisation makes the mean of the kept clips their sum, scaled.
    """

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        if x.dim() == 2:
            return x
        if mask is None:
            return F.normalize(x.float().mean(dim=1), dim=-1)
        every_row = torch.arange(len(x), device=x.device)
        return F.normalize(masked_clip_sum(x, every_row, mask), dim=-1)


class AttentionPool(nn.Module):
    """Softmax-weighted sum of clips; weights from a learned score of each normalised clip.

    score_c = <w, x_c / |x_c|> * sqrt(dim) + b. w starts at zero (uniform weights = the mean).
    """

    def __init__(self, dim: int):
        super().__init__()
        self.query = nn.Parameter(torch.zeros(dim))
        self.scale = float(dim) ** 0.5

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        if x.dim() != 3:
            raise ValueError(f"attention pooling needs per-clip input (n, clips, dim), got shape {tuple(x.shape)}")
        x = x.float()
        scores = F.normalize(x, dim=-1) @ self.query * self.scale  # (n, clips)
        if mask is not None:  # clips left out get no weight
            scores = scores.masked_fill(~mask, float("-inf"))
        weights = scores.softmax(dim=-1)
        return F.normalize((weights.unsqueeze(-1) * x).sum(dim=1), dim=-1)


def make_pool(kind: str, dim: int) -> nn.Module:
    if kind == "mean":
        return MeanPool()
    if kind == "attention":
        return AttentionPool(dim)
    raise ValueError(f"unknown pooling {kind!r}; choose mean or attention")
