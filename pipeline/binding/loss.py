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

Computed in one pass (`_InfoNCE`): the logits once, their logsumexp over rows and over columns,
and a hand-written backward, dL/dl = (softmax_rows(l) + softmax_cols(l) - Q_rows - Q_cols) / 2B,
where Q is the one-hot diagonal (plain CLIP) or the softmax over each row's / column's positives
(multi-positive). Autograd through two log-softmax graphs took a dozen elementwise kernels more
per step. `reference_loss` is the plain autograd form the tests compare it with.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def contrastive_loss(video: Tensor, audio: Tensor, logit_scale: Tensor | float,
                     groups: Tensor | None = None) -> Tensor:
    """video, audio: (B, d) L2-normalised, row-aligned pairs; groups: (B,) int labels or None."""
    positive = None
    if groups is not None:
        positive = groups[:, None] == groups[None, :]
        if int(positive.sum()) == len(groups):  # no pair shares a group: plain CLIP
            positive = None
    if not isinstance(logit_scale, Tensor):
        logit_scale = torch.tensor(float(logit_scale), dtype=video.dtype, device=video.device)
    return _InfoNCE.apply(video, audio, logit_scale, positive)


class _InfoNCE(torch.autograd.Function):
    """The loss above from (video, audio, scale[, positive mask]) with its gradient in closed form."""

    @staticmethod
    def forward(ctx, video: Tensor, audio: Tensor, scale: Tensor, positive: Tensor | None) -> Tensor:
        b = video.shape[0]
        sim = video @ audio.T
        logits = sim * scale
        lse_rows, lse_cols = torch.logsumexp(logits, 1), torch.logsumexp(logits, 0)
        if positive is None:
            pos = 2 * logits.diagonal().sum()
            masked = pos_rows = pos_cols = None
        else:
            masked = logits.masked_fill(~positive, torch.finfo(logits.dtype).min)
            pos_rows, pos_cols = torch.logsumexp(masked, 1), torch.logsumexp(masked, 0)
            pos = pos_rows.sum() + pos_cols.sum()
        ctx.save_for_backward(video, audio, scale, sim, logits, lse_rows, lse_cols, masked, pos_rows, pos_cols)
        return (lse_rows.sum() + lse_cols.sum() - pos) / (2 * b)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor):
        video, audio, scale, sim, logits, lse_rows, lse_cols, masked, pos_rows, pos_cols = ctx.saved_tensors
        b = video.shape[0]
        g = torch.sub(logits, lse_rows[:, None]).exp_()  # softmax over each row
        g += torch.sub(logits, lse_cols[None, :]).exp_()  # softmax over each column
        if masked is None:
            g.diagonal().sub_(2)
        else:
            g -= torch.sub(masked, pos_rows[:, None]).exp_()
            g -= torch.sub(masked, pos_cols[None, :]).exp_()
        g *= grad / (2 * b)  # dL/dlogits
        d_scale = (g * sim).sum() if ctx.needs_input_grad[2] else None
        g *= scale  # dL/dsim
        d_video = g @ audio if ctx.needs_input_grad[0] else None
        d_audio = g.T @ video if ctx.needs_input_grad[1] else None
        return d_video, d_audio, d_scale, None


def reference_loss(video: Tensor, audio: Tensor, logit_scale: Tensor | float,
                   groups: Tensor | None = None) -> Tensor:
    """The same loss by plain autograd (cross-entropy both ways; logsumexp of the positives with groups)."""
    logits = logit_scale * (video @ audio.T)
    if groups is not None:
        positive = groups[:, None] == groups[None, :]
        if int(positive.sum()) > len(groups):
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
