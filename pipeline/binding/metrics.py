"""Retrieval metrics: exact ranks in both directions, computed in row blocks.

Item i's video and music are a pair; `groups` (optional) puts items that share a track into
one group, and any member of the right group is a hit. For the video→music query i:

    best_i = max_{j ∈ G(i)} <v_i, a_j>
    rank_i = 1 + #{j ∉ G(i) : <v_i, a_j> ≥ best_i}

and the same with the roles swapped for music→video. Ties are counted against the query (a
negative that scores exactly as high as the best positive ranks above it), so a constant
scorer gets the worst rank, not the best.

`retrieval_ranks` never holds the n x n similarity matrix: one matmul per block of query rows
gives both directions (a row block's columns are all music; the column counts are summed over
blocks). Items are first sorted by group so each group is a contiguous range; its members are
then removed from the counts by slicing the same block, so a positive is never compared
against a differently rounded copy of itself. Counting uses packed byte sums (eight comparison
bytes per int64 add), which makes it cheap next to the matmul.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

DEFAULT_KS = (1, 5, 10, 25, 50)
_LANES = 255  # int64 words summed before a byte lane could overflow


def retrieval_ranks(video, audio, groups=None, *, chunk_mb: float = 256, chunk_rows: int | None = None,
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Ranks (1 = best) of each item's music among all music for its video (video→music), and
    of its video among all videos for its music (music→video).

    video, audio: (n, d) arrays or tensors, row-aligned (compared by dot product: normalise
    first for cosine). groups: (n,) integer labels or None (every item its own group).
    Memory: the inputs, a sorted float32 copy of each side, and one block of about `chunk_mb` MB.
    """
    q = torch.as_tensor(np.asarray(video) if not isinstance(video, Tensor) else video).float()
    g = torch.as_tensor(np.asarray(audio) if not isinstance(audio, Tensor) else audio).float()
    n = q.shape[0]
    if q.dim() != 2 or g.shape != q.shape:
        raise ValueError(f"video and audio must both be (n, d); got {tuple(q.shape)} and {tuple(g.shape)}")
    if n == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    labels = np.arange(n) if groups is None else np.asarray(groups)
    if labels.shape != (n,):
        raise ValueError(f"groups must have shape ({n},), got {labels.shape}")
    order = np.argsort(labels, kind="stable")
    lab = labels[order]
    new_group = np.ones(n, bool)
    new_group[1:] = lab[1:] != lab[:-1]
    starts = np.flatnonzero(new_group)
    sizes = np.diff(np.append(starts, n))
    order_t = torch.from_numpy(order)
    q = q.index_select(0, order_t).contiguous()
    g = g.index_select(0, order_t).contiguous()

    best_row, best_col = _group_best(q, g, starts, sizes)
    if chunk_rows is None:
        per_row = n * 4 + _padded(n)  # float32 scores + one comparison byte per score
        chunk_rows = int(max(1, min(n, chunk_mb * 2**20 // per_row)))
    chunk_rows = max(1, min(n, int(chunk_rows)))

    row_cnt = torch.zeros(n, dtype=torch.int64)
    col_cnt = torch.zeros(n, dtype=torch.int64)
    gt = g.T.contiguous()
    del g
    scores = torch.empty(chunk_rows, n)
    mask = torch.zeros(chunk_rows, _padded(n), dtype=torch.bool)  # padding stays False
    single = sizes == 1
    single_pos = starts[single]
    multi_starts = {int(s): starts[sizes == s] for s in np.unique(sizes[~single]).tolist()}

    for r0, r1, big in _blocks(n, chunk_rows, starts, sizes):
        m = r1 - r0
        s = torch.mm(q[r0:r1], gt, out=scores[:m])
        msk = mask[:m]
        torch.ge(s, best_row[r0:r1, None], out=msk[:, :n])
        row_cnt[r0:r1] += _count_rows(msk)
        torch.ge(s, best_col[None, :], out=msk[:, :n])
        col_cnt += _count_cols(msk)[:n]
        # members of the query's own group are positives, not competitors: take them out again
        if big is not None:  # rows r0:r1 all belong to one group larger than a block
            a, size = big
            blk = s[:, a:a + size]
            row_cnt[r0:r1] -= (blk >= best_row[r0:r1, None]).sum(1)
            col_cnt[a:a + size] -= (blk >= best_col[None, a:a + size]).sum(0)
            continue
        lo, hi = np.searchsorted(single_pos, [r0, r1])
        if hi > lo:
            i = torch.from_numpy(single_pos[lo:hi])
            diag = s[i - r0, i]
            row_cnt[i] -= (diag >= best_row[i]).long()
            col_cnt[i] -= (diag >= best_col[i]).long()
        for size, st_all in multi_starts.items():
            lo, hi = np.searchsorted(st_all, [r0, r1])
            if hi <= lo:
                continue
            idx = torch.from_numpy(st_all[lo:hi])[:, None] + torch.arange(size)[None, :]  # (G, size)
            blk = s[(idx - r0)[:, :, None], idx[:, None, :]]  # (G, size, size): each group's own block
            flat = idx.reshape(-1)
            row_cnt[flat] -= (blk >= best_row[idx][:, :, None]).sum(2).reshape(-1)
            col_cnt[flat] -= (blk >= best_col[idx][:, None, :]).sum(1).reshape(-1)
    rank_v2m = np.empty(n, np.int64)
    rank_m2v = np.empty(n, np.int64)
    rank_v2m[order] = (row_cnt + 1).numpy()
    rank_m2v[order] = (col_cnt + 1).numpy()
    return rank_v2m, rank_m2v


def _padded(n: int) -> int:
    return -(-n // (8 * _LANES)) * 8 * _LANES


def _count_rows(mask: Tensor) -> Tensor:
    """Number of True per row of a (m, padded) bool mask (padding is False)."""
    m, width = mask.shape
    words = mask.view(torch.uint8).view(torch.int64).view(m, width // (8 * _LANES), _LANES)
    packed = words.sum(2)  # each byte lane <= 255: no carry between lanes
    return packed.view(torch.uint8).view(m, -1).sum(1, dtype=torch.int64)


def _count_cols(mask: Tensor) -> Tensor:
    """Number of True per column of a (m, padded) bool mask."""
    m, width = mask.shape
    words = mask.view(torch.uint8).view(torch.int64)
    out = torch.zeros(width, dtype=torch.int64)
    for r in range(0, m, _LANES):
        out += words[r:r + _LANES].sum(0).view(torch.uint8)
    return out


def _blocks(n: int, rows: int, starts: np.ndarray, sizes: np.ndarray):
    """Row blocks of at most `rows` rows that never cut a group, except that a group larger
    than `rows` is cut into blocks of its own: yields (r0, r1, (start, size) of that group or None)."""
    r0 = 0
    while r0 < n:
        k = int(np.searchsorted(starts, r0, side="right")) - 1  # the group holding row r0
        if sizes[k] > rows:
            end = int(starts[k] + sizes[k])
            r1 = min(end, r0 + rows)
            yield r0, r1, (int(starts[k]), int(sizes[k]))
        else:  # r0 is a group start; stop before the group that r0 + rows would cut
            r1 = min(n, r0 + rows)
            if r1 < n:
                k = int(np.searchsorted(starts, r1, side="right")) - 1
                r1 = int(starts[k])
            yield r0, r1, None
        r0 = r1


def _group_best(q: Tensor, g: Tensor, starts: np.ndarray, sizes: np.ndarray, *,
                budget: int = 2**24) -> tuple[Tensor, Tensor]:
    """Best positive score per row (video→music) and per column (music→video), groups contiguous."""
    best_row = (q * g).sum(1)
    best_col = best_row.clone()
    d = q.shape[1]
    for size in np.unique(sizes[sizes > 1]).tolist():
        st = torch.from_numpy(starts[sizes == size])
        if size * size <= budget // 4:
            per = max(1, budget // (size * max(size, d)))
            for b0 in range(0, len(st), per):
                idx = st[b0:b0 + per, None] + torch.arange(size)[None, :]
                sim = torch.bmm(q[idx], g[idx].transpose(1, 2))  # (G, size, size)
                best_row[idx] = sim.amax(2)
                best_col[idx] = sim.amax(1)
        else:
            rows = max(1, budget // size)
            for a in st.tolist():
                col = torch.full((size,), -math.inf)
                for r in range(a, a + size, rows):
                    r_end = min(a + size, r + rows)
                    sim = q[r:r_end] @ g[a:a + size].T
                    best_row[r:r_end] = sim.amax(1)
                    col = torch.maximum(col, sim.amax(0))
                best_col[a:a + size] = col
    return best_row, best_col


def summarize(ranks: np.ndarray, ks=DEFAULT_KS) -> dict:
    """Recall@K (fractions), median and mean rank of 1-based ranks."""
    ranks = np.asarray(ranks)
    out = {f"R@{k}": float(np.mean(ranks <= k)) if len(ranks) else float("nan") for k in ks}
    out["median_rank"] = float(np.median(ranks)) if len(ranks) else float("nan")
    out["mean_rank"] = float(np.mean(ranks)) if len(ranks) else float("nan")
    return out


def recall_curve(ranks: np.ndarray, max_k: int) -> list[float]:
    """Recall@K for K = 1..max_k."""
    ranks = np.asarray(ranks)
    hist = np.bincount(np.minimum(ranks, max_k + 1), minlength=max_k + 2)[1:max_k + 1]
    return (np.cumsum(hist) / max(len(ranks), 1)).tolist()


def group_sizes_in(groups: np.ndarray | None, n: int) -> np.ndarray:
    """For each item, how many items of the gallery are in its group (itself included)."""
    if groups is None:
        return np.ones(n, np.int64)
    _, inverse, counts = np.unique(np.asarray(groups), return_inverse=True, return_counts=True)
    return counts[inverse]


def chance(groups: np.ndarray | None, n: int, ks=DEFAULT_KS, max_k: int = 50) -> dict:
    """Exact expected metrics of a random ranking (same in both directions).

    With m positives among n, the rank is the position of the first positive in a random
    order: P(rank > r) = C(n-r, m) / C(n, m), E[rank] = (n+1)/(m+1). Recall@K is averaged
    over queries; the median is that of the mixture over queries.
    """
    m_per_query = group_sizes_in(groups, n)
    ms, counts = np.unique(m_per_query, return_counts=True)
    weights = counts / counts.sum()
    r = np.arange(0, n + 1, dtype=np.float64)

    def survival(m: int) -> np.ndarray:  # P(rank > r) for r = 0..n
        with np.errstate(invalid="ignore"):
            logs = (_lgamma(n - r + 1) - _lgamma(n - r - m + 1) - _lgamma(n + 1) + _lgamma(n - m + 1))
        sv = np.where(n - r >= m, np.exp(logs), 0.0)
        return sv

    cdf = np.zeros(n + 1)
    mean = 0.0
    for m, w in zip(ms.tolist(), weights.tolist()):
        cdf += w * (1 - survival(m))
        mean += w * (n + 1) / (m + 1)
    out = {f"R@{k}": float(cdf[min(k, n)]) for k in ks}
    out["median_rank"] = float(np.searchsorted(cdf, 0.5 - 1e-9))
    out["mean_rank"] = float(mean)
    out["curve"] = [float(cdf[min(k, n)]) for k in range(1, max_k + 1)]
    return out


def _lgamma(x: np.ndarray) -> np.ndarray:
    return torch.special.gammaln(torch.as_tensor(np.maximum(x, 1.0), dtype=torch.float64)).numpy()
