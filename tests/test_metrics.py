"""Chunked ranking (pipeline.metrics) against a plain full-matrix reference, ties included."""

import math

import numpy as np
import pytest
import torch

from mvbind.pipeline.binding.metrics import chance, recall_curve, retrieval_ranks, summarize

pytestmark = pytest.mark.usefixtures("one_thread")


def reference_ranks(video: np.ndarray, audio: np.ndarray, groups=None) -> tuple[np.ndarray, np.ndarray]:
    """The definition, on the whole float64 similarity matrix: 1 + #negatives scoring >= the best positive."""
    sim = video.astype(np.float64) @ audio.astype(np.float64).T
    n = len(sim)
    labels = np.arange(n) if groups is None else np.asarray(groups)
    v2m, m2v = np.empty(n, np.int64), np.empty(n, np.int64)
    for i in range(n):
        member = labels == labels[i]
        v2m[i] = 1 + np.sum(sim[i, ~member] >= sim[i, member].max())
        m2v[i] = 1 + np.sum(sim[~member, i] >= sim[member, i].max())
    return v2m, m2v


def small_integers(rng, n, d):
    """Entries in {-2..2}: every dot product is an exact small integer, so ties are real ties."""
    return rng.integers(-2, 3, (n, d)).astype(np.float32)


@pytest.mark.parametrize("seed", range(6))
def test_chunked_ranks_equal_full_matrix_with_ties(seed):
    rng = np.random.default_rng(seed)
    n, d = int(rng.integers(2, 200)), int(rng.integers(1, 6))
    video, audio = small_integers(rng, n, d), small_integers(rng, n, d)
    groupings = [None, rng.integers(0, max(1, n // 3), n), np.zeros(n, int), rng.integers(0, 4, n)]
    for groups in groupings:
        expected = reference_ranks(video, audio, groups)
        for rows in (1 if n < 40 else 3, 16, n):
            got = retrieval_ranks(video, audio, groups, chunk_rows=rows)
            np.testing.assert_array_equal(got[0], expected[0])
            np.testing.assert_array_equal(got[1], expected[1])


@pytest.mark.parametrize("seed", range(4))
def test_tiles_that_cut_groups_equal_full_matrix_with_ties(seed):
    """Small row and column tiles (widths that divide nothing), groups larger than a tile cut across
    tiles both ways, and exact ties everywhere: the counts must still be the definition's."""
    rng = np.random.default_rng(100 + seed)
    n, d = int(rng.integers(30, 100)), int(rng.integers(1, 4))
    video, audio = small_integers(rng, n, d), small_integers(rng, n, d)
    big = np.concatenate([np.zeros(17, int), np.ones(9, int), 2 + rng.integers(0, n, n - 26)])
    for groups in (None, rng.permutation(big), rng.integers(0, 5, n)):
        expected = reference_ranks(video, audio, groups)
        for rows, cols in ((2, 3), (3, 7), (4, 5), (8, 18), (8, 33), (16, n)):
            got = retrieval_ranks(video, audio, groups, chunk_rows=rows, chunk_cols=cols)
            np.testing.assert_array_equal(got[0], expected[0], err_msg=f"rows {rows} cols {cols}")
            np.testing.assert_array_equal(got[1], expected[1], err_msg=f"rows {rows} cols {cols}")


def test_chunked_ranks_equal_full_matrix_real_valued():
    rng = np.random.default_rng(1)
    n, d = 700, 32
    video = rng.standard_normal((n, d)).astype(np.float32)
    audio = (video + 1.5 * rng.standard_normal((n, d))).astype(np.float32)
    groups = rng.integers(0, 500, n)
    expected = reference_ranks(video, audio, groups)
    got = retrieval_ranks(torch.from_numpy(video), torch.from_numpy(audio), groups, chunk_mb=0.5)
    np.testing.assert_array_equal(got[0], expected[0])
    np.testing.assert_array_equal(got[1], expected[1])


def test_ties_count_against_the_query():
    video = np.ones((5, 3), np.float32)
    audio = np.ones((5, 3), np.float32)  # every score equal
    v2m, m2v = retrieval_ranks(video, audio)
    assert v2m.tolist() == [5] * 5 and m2v.tolist() == [5] * 5  # constant scorer: worst rank
    v2m, _ = retrieval_ranks(video, audio, np.zeros(5, int))
    assert v2m.tolist() == [1] * 5  # everything is a positive


def test_block_memory_stays_within_chunk_mb(monkeypatch):
    n, d = 6000, 8
    rng = np.random.default_rng(0)
    video, audio = rng.standard_normal((n, d)), rng.standard_normal((n, d))
    shapes = []
    real_mm = torch.mm

    def spy(a, b, *args, **kw):
        shapes.append((a.shape[0], b.shape[1]))
        return real_mm(a, b, *args, **kw)

    monkeypatch.setattr(torch, "mm", spy)
    retrieval_ranks(video, audio, chunk_mb=1)
    assert shapes and all(rows * cols * 4 <= 2**20 for rows, cols in shapes)
    assert sum(rows * cols for rows, cols in shapes) == n * n  # every score computed once, in tiles


def test_summary_recall_median_mean():
    ranks = np.array([1, 2, 3, 10, 60, 1])
    s = summarize(ranks, (1, 5, 10, 50))
    assert s["R@1"] == pytest.approx(2 / 6) and s["R@5"] == pytest.approx(4 / 6)
    assert s["R@10"] == pytest.approx(5 / 6) and s["R@50"] == pytest.approx(5 / 6)
    assert s["median_rank"] == 2.5 and s["mean_rank"] == pytest.approx(77 / 6)
    assert recall_curve(ranks, 3) == pytest.approx([2 / 6, 3 / 6, 4 / 6])


def test_chance_is_exact():
    n = 1000
    c = chance(None, n, (1, 10, 50))
    assert c["R@1"] == pytest.approx(1 / n) and c["R@10"] == pytest.approx(10 / n)
    assert c["mean_rank"] == pytest.approx((n + 1) / 2) and c["median_rank"] == 500
    groups = np.repeat(np.arange(n // 4), 4)  # every item has 3 group mates
    c = chance(groups, n, (1, 10))
    assert c["R@10"] == pytest.approx(1 - math.comb(n - 10, 4) / math.comb(n, 4))
    assert c["mean_rank"] == pytest.approx((n + 1) / 5)


def test_group_best_scores_in_both_code_paths():
    from mvbind.pipeline.binding.metrics import _group_best

    sizes = np.array([1, 3, 3, 40, 1, 2])
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    n = int(sizes.sum())
    q, g = torch.randn(n, 6, dtype=torch.float64), torch.randn(n, 6, dtype=torch.float64)
    sim = (q @ g.T).numpy()
    want_row, want_col = np.empty(n), np.empty(n)
    for a, s in zip(starts, sizes):
        want_row[a:a + s] = sim[a:a + s, a:a + s].max(1)
        want_col[a:a + s] = sim[a:a + s, a:a + s].max(0)
    for budget in (2**24, 64):  # batched small groups / row blocks of one big group
        row, col = _group_best(q, g, starts, sizes, budget=budget)
        np.testing.assert_allclose(row.numpy(), want_row, rtol=1e-12)
        np.testing.assert_allclose(col.numpy(), want_col, rtol=1e-12)
