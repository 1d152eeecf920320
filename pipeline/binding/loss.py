"""Symmetric InfoNCE (CLIP) with multiple positives for items that share a track.

For a batch of B pairs, logits = s · V Aᵀ with s = exp(logit_scale) (the model clamps it at
100). Item i's positives P(i) are the items of its music group (just i when it has none):

    L_v2m = -1/B Σ_i log( Σ_{j∈P(i)} exp(l_ij) / Σ_j exp(l_ij) )
    L_m2v = -1/B Σ_j log( Σ_{i∈P(j)} exp(l_ij) / Σ_i exp(l_ij) )
    L     = (L_v2m + L_m2v) / 2

With no shared groups this is exactly CLIP's loss (cross-entropy against the diagonal, both
ways). With groups it never pushes two members of a group apart: the gradient on every
positive logit is ≤ 0 (the MIL-NCE form; SupCon's average of per-positive terms would push
the best-matching member down).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def contrastive_loss(video: Tensor, audio: Tensor, logit_scale: Tensor | float,
                     groups: Tensor | None = None) -> Tensor:
    """video, audio: (B, d) L2-normalised, row-aligned pairs; groups: (B,) int labels or None."""
    logits = logit_scale * (video @ audio.T)
    if groups is not None:
        positive = groups[:, None] == groups[None, :]
        if int(positive.sum()) > len(groups):  # some pair shares a group: multi-positive form
            return _multi_positive(logits, positive)
    target = torch.arange(len(logits), device=logits.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


def _multi_positive(logits: Tensor, positive: Tensor) -> Tensor:
    neg_inf = torch.finfo(logits.dtype).min
    pos_logits = logits.masked_fill(~positive, neg_inf)
    v2m = torch.logsumexp(logits, dim=1) - torch.logsumexp(pos_logits, dim=1)
    m2v = torch.logsumexp(logits, dim=0) - torch.logsumexp(pos_logits, dim=0)
    return (v2m.mean() + m2v.mean()) / 2


class BindingLoss(nn.Module):
    """`contrastive_loss` as a module; `multi_positive=False` ignores groups (plain CLIP loss)."""

    def __init__(self, multi_positive: bool = True):
        super().__init__()
        self.multi_positive = multi_positive

    def forward(self, video: Tensor, audio: Tensor, logit_scale: Tensor, groups: Tensor | None = None) -> Tensor:
        return contrastive_loss(video, audio, logit_scale, groups if self.multi_positive else None)
