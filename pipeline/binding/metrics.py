"""Retrieval metrics: exact ranks in both directions, computed in row blocks.

Item i's video and music are a pair; `groups` (optional) puts items that share a track into
one group, and any member of the right group is a hit. For the video→music query i:

    best_i = max_{j ∈ G(i)} <v_i, a_j>
    rank_i = 1 + #{j ∉ G(i) : <v_i, a_j> ≥ best_i}

and the same with the roles swapped for music→video. Ties are counted against the query (a
negative that scores exactly as high as the best positive ranks above it), so a constant
scorer gets the worst rank, not the best.

`retrieval_ranks` never holds the n x n similarity matrix, nor sorts anything: a query's rank is
one plus the number of negatives scoring at least its best positive, counted right after the
matmul of each tile (a block of query rows x a block of gallery columns, 8 MB, so it is still
in cache). One compiled pass over a tile counts both directions (row counts for
video→music, column counts for music→video): comparing a 256 MB block with torch afterwards
took four memory passes (two comparisons writing masks, two counts) and cost 60 % of the matmul
at 100k items. Items are first sorted by group so each group is a contiguous range; tiles never
cut a group smaller than a tile, and its members are removed from the counts by slicing the
same tile, so a positive is never compared against a differently rounded copy of itself.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

DEFAULT_KS = (1, 5, 10, 25, 50)
TILE_ROWS = 512  # query rows per tile
TILE_COLS = 4096  # gallery columns per tile: 8 MB of scores, counted while still in cache


def retrieval_ranks(video, audio, groups=None, *, chunk_mb: float = 256, chunk_rows: int | None = None,
                    chunk_cols: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Ranks (1 = best) of each item's music among all music for its video (video→music), and
    of its video among all videos for its music (music→video).

    video, audio: (n, d) arrays or tensors, row-aligned (compared by dot product: normalise
    first for cosine). groups: (n,) integer labels or None (every item its own group).
    Memory: the inputs, a sorted float32 copy of each side, and one tile of at most `chunk_mb` MB
    (`chunk_rows` x `chunk_cols` scores; the defaults are cache-sized, tests pass small ones).
    Ties count against the query, exactly as before tiling (tests/test_metrics.py checks both
    against a float64 full-matrix reference on integer data full of ties).
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
    loading = _TileCounterLoader()  # numba's start-up (~0.5 s) in a thread, while the inputs are sorted
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
    rows = min(n, int(chunk_rows) if chunk_rows else TILE_ROWS)
    cols = min(n, max(rows, int(chunk_cols) if chunk_cols else TILE_COLS))  # >= rows: see _Members
    if chunk_rows is None and rows * cols * 4 > chunk_mb * 2**20:
        rows = int(max(1, chunk_mb * 2**20 // (cols * 4)))

    count_tile = loading.result()
    row_np, col_np = np.zeros(n, np.int64), np.zeros(n, np.int64)
    row_cnt, col_cnt = torch.from_numpy(row_np), torch.from_numpy(col_np)  # the same memory
    brow_np, bcol_np = best_row.numpy(), best_col.numpy()
    buffer = torch.empty(rows * cols)
    col_blocks = list(_blocks(n, cols, starts, sizes))
    members = _Members(starts, sizes)
    for r0, r1, big in _blocks(n, rows, starts, sizes):
        m = r1 - r0
        qb = q[r0:r1]
        for c0, c1, _ in col_blocks:
            w = c1 - c0
            s = torch.mm(qb, g[c0:c1].T, out=buffer[:m * w].view(m, w))  # contiguous, so numpy sees it plainly
            count_tile(s.numpy(), brow_np[r0:r1], bcol_np[c0:c1], row_np[r0:r1], col_np[c0:c1])
            members.remove(s, r0, r1, c0, c1, big, best_row, best_col, row_cnt, col_cnt)
    rank_v2m = np.empty(n, np.int64)
    rank_m2v = np.empty(n, np.int64)
    rank_v2m[order] = (row_cnt + 1).numpy()
    rank_m2v[order] = (col_cnt + 1).numpy()
    return rank_v2m, rank_m2v


class _Members:
    """Takes a tile's own-group comparisons back out of the counts: members of a query's group
    are positives, not competitors. Groups are contiguous ranges; a tile cuts only a group larger
    than its row count (then its rows all belong to that group: `big`), and columns are at least
    as many as rows, so any other group is wholly inside or wholly outside the tile."""

    def __init__(self, starts: np.ndarray, sizes: np.ndarray):
        single = sizes == 1
        self.single_pos = starts[single]
        self.multi_starts = {int(s): starts[sizes == s] for s in np.unique(sizes[~single]).tolist()}

    def remove(self, s: Tensor, r0: int, r1: int, c0: int, c1: int, big: tuple[int, int] | None,
               best_row: Tensor, best_col: Tensor, row_cnt: Tensor, col_cnt: Tensor) -> None:
        if big is not None:  # rows r0:r1 all belong to one group larger than a row block
            a, size = big
            lo, hi = max(a, c0), min(a + size, c1)
            if hi > lo:
                blk = s[:, lo - c0:hi - c0]
                row_cnt[r0:r1] -= (blk >= best_row[r0:r1, None]).sum(1)
                col_cnt[lo:hi] -= (blk >= best_col[None, lo:hi]).sum(0)
            return
        lo, hi = max(r0, c0), min(r1, c1)  # groups starting here lie wholly in both ranges
        if hi <= lo:
            return
        a, b = np.searchsorted(self.single_pos, [lo, hi])
        if b > a:
            i = torch.from_numpy(self.single_pos[a:b])
            diag = s[i - r0, i - c0]
            row_cnt[i] -= (diag >= best_row[i]).long()
            col_cnt[i] -= (diag >= best_col[i]).long()
        for size, st_all in self.multi_starts.items():
            a, b = np.searchsorted(st_all, [lo, hi])
            if b <= a:
                continue
            idx = torch.from_numpy(st_all[a:b])[:, None] + torch.arange(size)[None, :]  # (G, size)
            blk = s[(idx - r0)[:, :, None], (idx - c0)[:, None, :]]  # (G, size, size): each group's own block
            flat = idx.reshape(-1)
            row_cnt[flat] -= (blk >= best_row[idx][:, :, None]).sum(2).reshape(-1)
            col_cnt[flat] -= (blk >= best_col[idx][:, None, :]).sum(1).reshape(-1)


def _count_tile(s, best_row, best_col, row_cnt, col_cnt):
    """For every score of a tile, one read: row i counts scores >= best_row[i], column j counts
    scores >= best_col[j]. NaN compares false, as in torch. Run compiled (`_tile_counter`); the
    column counts gather in a local array first, which the compiler knows aliases nothing. Rows
    go four at a time, so each column's threshold and count are loaded and stored once per four
    scores (a third less time per score than one row at a time, measured)."""
    m, w = s.shape
    cols = np.zeros(w, np.int32)
    one, zero = np.int32(1), np.int32(0)
    i = 0
    while i + 4 <= m:
        b0, b1, b2, b3 = best_row[i], best_row[i + 1], best_row[i + 2], best_row[i + 3]
        c0 = c1 = c2 = c3 = zero
        for j in range(w):
            x0, x1, x2, x3 = s[i, j], s[i + 1, j], s[i + 2, j], s[i + 3, j]
            bc = best_col[j]
            c0 += one if x0 >= b0 else zero
            c1 += one if x1 >= b1 else zero
            c2 += one if x2 >= b2 else zero
            c3 += one if x3 >= b3 else zero
            cols[j] += ((one if x0 >= bc else zero) + (one if x1 >= bc else zero)
                        + (one if x2 >= bc else zero) + (one if x3 >= bc else zero))
        row_cnt[i] += c0
        row_cnt[i + 1] += c1
        row_cnt[i + 2] += c2
        row_cnt[i + 3] += c3
        i += 4
    while i < m:
        b = best_row[i]
        c = zero
        for j in range(w):
            x = s[i, j]
            c += one if x >= b else zero
            cols[j] += one if x >= best_col[j] else zero
        row_cnt[i] += c
        i += 1
    for j in range(w):
        col_cnt[j] += cols[j]


def _tile_counter():
    """`_count_tile` compiled by numba (which librosa already brings), on first use; the machine
    code is cached on disk, so later processes skip the compile. It runs on one thread: torch's
    OpenMP workers keep spinning for a while after each matmul, and a second counting thread only
    fought them for the two cores (measured: slower than one)."""
    global _COMPILED
    if _COMPILED is None:
        import numba

        kernel = numba.njit(cache=True, nogil=True, boundscheck=False, error_model="numpy")(_count_tile)
        s, best, count = np.zeros((4, 4), np.float32), np.zeros(4, np.float32), np.zeros(4, np.int64)
        kernel(s, best, best, count, count)  # load (or compile) the machine code for the types ranking uses
        _COMPILED = kernel
    return _COMPILED


class _TileCounterLoader:
    """`_tile_counter()` in a background thread: importing numba and loading the cached kernel take
    ~0.5-0.9 s, mostly Python, which overlaps with the argsort, gathers and best-positive scores that
    precede the first tile (torch releases the GIL). `result()` waits for it and re-raises its error."""

    def __init__(self):
        import threading

        self._out: list = []
        self._thread = None
        if _COMPILED is None:
            self._thread = threading.Thread(target=self._run, name="mvbind-numba-load", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        try:
            self._out.append(_tile_counter())
        except Exception as e:  # noqa: BLE001 -- handed to the caller by result()
            self._out.append(e)

    def result(self):
        if self._thread is None:
            return _tile_counter()
        self._thread.join()
        out = self._out[0]
        if isinstance(out, Exception):
            raise out
        return out


_COMPILED = None


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
