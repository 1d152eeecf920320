"""Music groups: items whose videos share one track.

Short videos reuse popular tracks, so "the right music" for a video can be any of several
items. Two items join one group when
  - they carry the same non-empty manifest `music_id`, or
  - their mean-pooled, L2-normalised cached audio embeddings have cosine >= a threshold
    (the same audio re-uploaded, up to fp16 and decoding noise),
closed transitively (connected components). Labels are deterministic: items are numbered in
the caller's order, each group is labelled by its smallest member, then renumbered 0..G-1.

Near-duplicate search is exact on the verified pairs: candidates come from a chunked
matmul of seeded random projections (64 or 128 dims; a margin of six standard deviations
of the projected cosine's error below the threshold), and every candidate is checked against
the full-dimension cosine. Below a threshold of 0.9 the margin would admit too much, so
the search runs in full dimension.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class MusicGroups:
    labels: np.ndarray  # (n,) int64 group label per item, 0..G-1
    music_id_items: int = 0  # items that share their music_id with another item
    audio_dup_pairs: int = 0  # verified near-identical audio pairs

    def sizes(self) -> np.ndarray:
        """Sizes of the groups with two or more members, largest first."""
        counts = np.bincount(self.labels) if len(self.labels) else np.zeros(0, np.int64)
        return np.sort(counts[counts > 1])[::-1]

    def members(self) -> list[np.ndarray]:
        """Item indices of each group with two or more members, in label order."""
        order = np.argsort(self.labels, kind="stable")
        cuts = np.flatnonzero(np.diff(self.labels[order])) + 1
        return [m for m in np.split(order, cuts) if len(m) > 1]

    def summary(self) -> dict:
        sizes = self.sizes()
        bins = {"2": int((sizes == 2).sum()), "3-5": int(((sizes >= 3) & (sizes <= 5)).sum()),
                "6-20": int(((sizes >= 6) & (sizes <= 20)).sum()), ">20": int((sizes > 20).sum())}
        return {
            "items": int(len(self.labels)),
            "groups": int(len(sizes)),  # groups of two or more items
            "items_in_groups": int(sizes.sum()),
            "largest": int(sizes[0]) if len(sizes) else 1,
            "median_size": float(np.median(sizes)) if len(sizes) else 1.0,
            "size_histogram": bins,
            "music_id_items": int(self.music_id_items),
            "audio_dup_pairs": int(self.audio_dup_pairs),
        }

    def describe(self) -> str:
        s = self.summary()
        if not s["groups"]:
            return f"music groups: none among {s['items']} items (every item is its own track)"
        hist = ", ".join(f"{k}: {v}" for k, v in s["size_histogram"].items() if v)
        return (f"music groups: {s['groups']} groups share a track, covering {s['items_in_groups']} of "
                f"{s['items']} items (largest {s['largest']}, median {s['median_size']:g}; sizes {hist}); "
                f"{s['music_id_items']} items by music_id, {s['audio_dup_pairs']} near-identical audio pairs")


def find_groups(music_ids: np.ndarray | None = None, audio: np.ndarray | None = None, *,
                use_music_id: bool = True, audio_threshold: float | None = 0.98, chunk_mb: float = 256,
                seed: int = 0) -> MusicGroups:
    """Group labels for n items from music ids (strings, "" = unknown) and/or pooled audio (n, d)."""
    n = len(music_ids) if music_ids is not None else len(audio)
    src: list[np.ndarray] = []
    dst: list[np.ndarray] = []
    id_items = 0
    if use_music_id and music_ids is not None and n:
        ids = np.asarray(music_ids).astype(str)
        known = np.flatnonzero(ids != "")
        if len(known):
            _, first, inverse, counts = np.unique(ids[known], return_index=True, return_inverse=True,
                                                  return_counts=True)
            rep = known[first][inverse]  # first item (in caller order) with the same id
            src.append(known)
            dst.append(rep)
            id_items = int(counts[counts > 1].sum())
    pairs = 0
    if audio is not None and audio_threshold is not None and n:
        i, j = near_duplicate_pairs(audio, audio_threshold, chunk_mb=chunk_mb, seed=seed)
        src.append(i)
        dst.append(j)
        pairs = len(i)
    edges_a = np.concatenate(src) if src else np.zeros(0, np.int64)
    edges_b = np.concatenate(dst) if dst else np.zeros(0, np.int64)
    labels = connected_components(n, edges_a, edges_b)
    return MusicGroups(labels=labels, music_id_items=id_items, audio_dup_pairs=pairs)


def connected_components(n: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Component labels 0..G-1 numbered by each component's smallest member (vectorised hook and compress)."""
    parent = np.arange(n, dtype=np.int64)
    a = np.asarray(a, np.int64)
    b = np.asarray(b, np.int64)
    while len(a):
        pa, pb = parent[a], parent[b]
        differ = pa != pb
        if not differ.any():
            break
        lo, hi = np.minimum(pa, pb)[differ], np.maximum(pa, pb)[differ]
        np.minimum.at(parent, hi, lo)  # hook the larger root under the smaller one
        while True:  # compress until every node points at its root
            grand = parent[parent]
            if np.array_equal(grand, parent):
                break
            parent = grand
        a, b = a[differ], b[differ]
    _, labels = np.unique(parent, return_inverse=True)
    return labels.astype(np.int64)


def near_duplicate_pairs(x: np.ndarray, threshold: float, *, chunk_mb: float = 256,
                         seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """All pairs i < j with cosine(x_i, x_j) >= threshold (rows L2-normalised by the caller)."""
    x_t = torch.as_tensor(np.asarray(x, np.float32))
    n, d = x_t.shape
    sketch = 64 if threshold >= 0.95 else 128
    if threshold >= 0.9 and d > sketch:
        gen = torch.Generator().manual_seed(seed)
        proj = torch.randn(d, sketch, generator=gen) / sketch**0.5
        y = torch.nn.functional.normalize(x_t @ proj, dim=1)
        margin = 6 * (1 - threshold**2) / sketch**0.5 + 0.02
        filt = threshold - margin
    else:
        y, filt = x_t, threshold - 1e-5
    rows = int(max(1, min(n, chunk_mb * 2**20 // max(1, 4 * n))))
    out_i: list[np.ndarray] = []
    out_j: list[np.ndarray] = []
    for r0 in range(0, n, rows):
        r1 = min(n, r0 + rows)
        sim = y[r0:r1] @ y[r0:].T  # upper triangle only: columns from r0
        ci, cj = torch.nonzero(sim >= filt, as_tuple=True)
        keep = cj > ci  # both counted from r0: j > i
        ci, cj = ci[keep] + r0, cj[keep] + r0
        for s in range(0, len(ci), 1 << 18):  # verify in full dimension
            bi, bj = ci[s:s + (1 << 18)], cj[s:s + (1 << 18)]
            ok = (x_t[bi] * x_t[bj]).sum(1) >= threshold - 1e-6  # float32 rounding of equal vectors
            out_i.append(bi[ok].numpy())
            out_j.append(bj[ok].numpy())
    if not out_i:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(out_i).astype(np.int64), np.concatenate(out_j).astype(np.int64)
