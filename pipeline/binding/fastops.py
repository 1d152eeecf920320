"""Two per-step operations of the projector with cheaper kernels than their autograd defaults (CPU).

- `l2_normalize`: F.normalize's forward (x / max(|x|, eps), the same three ops, so the same
  numbers), with the backward in closed form, (g - y <g, y>) / max(|x|, eps), instead of autograd's
  way through norm, clamp and division (about a dozen kernels per call).
- `Dropout`: nn.Dropout's semantics (zero with probability p, scale the rest by 1/(1-p), identity in
  eval mode; no parameters or buffers, so checkpoints are unchanged), with its mask drawn by a
  counter-based hash (splitmix64 of seed + index) in one compiled pass instead of torch's
  serial Mersenne-Twister `bernoulli_` (which took 10-20 % of the residual head's epoch on CPU). The seed
  of each call is one draw from torch's global generator, so a run is as repeatable as before for a
  given `torch.manual_seed`, and resume (which restores that generator) is still exact; the masks
  themselves differ from torch's.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn


class _L2Normalize(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, eps: float) -> Tensor:
        norm = x.norm(2, -1, keepdim=True).clamp_min(eps)
        y = x / norm.expand_as(x)
        ctx.save_for_backward(y, norm)
        ctx.eps = eps
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g: Tensor):
        y, norm = ctx.saved_tensors
        dot = torch.linalg.vecdot(g, y, dim=-1).unsqueeze(-1)
        clamped = norm <= ctx.eps  # there y = x / eps is linear in x: no projection term
        if bool(clamped.any()):
            dot = dot.masked_fill(clamped, 0)
        return torch.addcmul(g, y, dot, value=-1).div_(norm), None


def l2_normalize(x: Tensor, eps: float = 1e-12) -> Tensor:
    """Unit rows along the last dimension, as F.normalize(x, dim=-1, eps=eps)."""
    if not (torch.is_grad_enabled() and x.requires_grad):
        return torch.nn.functional.normalize(x, dim=-1, eps=eps)
    return _L2Normalize.apply(x, eps)


# -- dropout ---------------------------------------------------------------------------------------
_GOLDEN = 0x9E3779B97F4A7C15
_M1 = 0xBF58476D1CE4E5B9
_M2 = 0x94D049BB133111EB


def _dropout_forward(x, out, keep, seed, threshold, scale):
    """out = x * scale where hash(seed + i) >= threshold (the high 32 bits of splitmix64), else x * 0."""
    golden, m1, m2 = np.uint64(_GOLDEN), np.uint64(_M1), np.uint64(_M2)
    s30, s27, s31, s32 = np.uint64(30), np.uint64(27), np.uint64(31), np.uint64(32)
    zero = x.dtype.type(0)
    for i in range(x.size):
        z = seed + np.uint64(i) * golden
        z = (z ^ (z >> s30)) * m1
        z = (z ^ (z >> s27)) * m2
        z = z ^ (z >> s31)
        k = (z >> s32) >= threshold
        keep[i] = k
        out[i] = x[i] * (scale if k else zero)


def _dropout_backward(g, keep, out, scale):
    zero = g.dtype.type(0)
    for i in range(g.size):
        out[i] = g[i] * (scale if keep[i] else zero)


_KERNELS = None


def _kernels():
    """The two loops compiled by numba (cached on disk, as metrics' tile counter), on first use."""
    global _KERNELS
    if _KERNELS is None:
        import numba

        jit = numba.njit(cache=True, nogil=True, boundscheck=False, error_model="numpy")
        _KERNELS = jit(_dropout_forward), jit(_dropout_backward)
    return _KERNELS


class _Dropout(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, p: float, seed: int) -> Tensor:
        fwd, _ = _kernels()
        x = x.contiguous()
        out = torch.empty_like(x)
        keep = torch.empty(x.shape, dtype=torch.bool)
        scale = np.dtype(str(x.dtype).removeprefix("torch.")).type(1.0 / (1.0 - p))
        threshold = np.uint64(min(int(round(p * 2**32)), 2**32))
        fwd(x.view(-1).numpy(), out.view(-1).numpy(), keep.view(-1).numpy(), np.uint64(seed), threshold, scale)
        ctx.save_for_backward(keep)
        ctx.scale = scale
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g: Tensor):
        (keep,) = ctx.saved_tensors
        _, bwd = _kernels()
        g = g.contiguous()
        out = torch.empty_like(g)
        bwd(g.view(-1).numpy(), keep.view(-1).numpy(), out.view(-1).numpy(), ctx.scale)
        return out, None, None


def dropout(x: Tensor, p: float, training: bool = True) -> Tensor:
    """F.dropout(x, p, training) with the hashed mask (CPU float32/float64; anything else goes to F.dropout)."""
    if not training or p == 0.0:
        return x
    if p == 1.0 or x.device.type != "cpu" or x.dtype not in (torch.float32, torch.float64):
        return torch.nn.functional.dropout(x, p, training)
    seed = int(torch.randint(-2**63, 2**63 - 1, (), dtype=torch.int64)) % 2**64
    return _Dropout.apply(x, p, seed)


class Dropout(nn.Module):
    """nn.Dropout with the hashed mask (same semantics, no state)."""

    def __init__(self, p: float = 0.5):
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"dropout probability has to be between 0 and 1, but got {p}")
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        return dropout(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"


# -- clip dropout's pooling ------------------------------------------------------------------------
def _masked_clip_sum(clips, idx, mask, lut, out):
    """out[b] = Σ_q mask[b, q] · clips[idx[b], q] in float32, clips in clip order; fp16 read as uint16 via `lut`."""
    batch, count = mask.shape
    dim = out.shape[1]
    for b in range(batch):
        acc = out[b]
        for j in range(dim):
            acc[j] = 0.0
        row = idx[b]
        for q in range(count):
            if mask[b, q]:
                src = clips[row, q]
                for j in range(dim):
                    acc[j] += lut[src[j]]


_POOL = None


def _pool_kernel():
    global _POOL
    if _POOL is None:
        import numba

        _POOL = numba.njit(cache=True, nogil=True, boundscheck=False, error_model="numpy")(_masked_clip_sum)
    return _POOL


_HALF_TO_FLOAT = np.arange(2**16, dtype=np.uint16).view(np.float16).astype(np.float32)  # every fp16, exactly


def masked_clip_sum(clips: Tensor, idx: Tensor, mask: Tensor) -> Tensor:
    """(B, dim) float32: for each b, the sum of clips[idx[b], q] over the q with mask[b, q] (clip order).

    `clips` (n, count, dim) as cached (float16) stays where it is: only the kept clips of the B rows are read,
    converted exactly (a table of all 65 536 fp16 values), and summed in float32, in one pass. Normalising the
    result gives the mean pooling of the kept clips. CPU float16 takes that kernel; anything else gathers and
    sums with torch (the same sums, possibly in another order).
    """
    if clips.device.type != "cpu" or clips.dtype != torch.float16 or not clips.is_contiguous():
        return torch.bmm(mask.unsqueeze(1).float(), clips.index_select(0, idx).float()).squeeze(1)
    out = torch.empty(len(idx), clips.shape[2], dtype=torch.float32)
    _pool_kernel()(clips.view(torch.int16).numpy().view(np.uint16), idx.numpy(), mask.numpy(), _HALF_TO_FLOAT,
                   out.numpy())
    return out
