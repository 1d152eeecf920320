"""Music groups (pipeline.groups), their effect on hits (pipeline.metrics), and splits (pipeline.splits)."""

import numpy as np
import pytest

from mvbind.pipeline.binding.groups import connected_components, find_groups, near_duplicate_pairs
from mvbind.pipeline.binding.metrics import retrieval_ranks, summarize
from mvbind.pipeline.binding.splits import SplitError, assign_splits

pytestmark = pytest.mark.usefixtures("one_thread")


def brute_pairs(x, threshold):
    sim = x.astype(np.float64) @ x.astype(np.float64).T
    i, j = np.nonzero(np.triu(sim >= threshold - 1e-6, 1))
    return set(zip(i.tolist(), j.tolist()))


@pytest.mark.parametrize("threshold", [0.99, 0.95, 0.9, 0.7])
def test_near_duplicates_match_brute_force(threshold):
    rng = np.random.default_rng(0)
    n, d = 1200, 256
    common = rng.standard_normal(d)
    x = 0.7 * common + rng.standard_normal((n, d))  # correlated, like embeddings of one kind of audio
    for _ in range(150):  # planted near-copies at a spread of similarities
        i, j = rng.integers(0, n, 2)
        x[j] = x[i] + rng.uniform(0.01, 0.6) * rng.standard_normal(d)
    x[5] = x[4]  # an exact copy
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    i, j = near_duplicate_pairs(x, threshold, chunk_mb=0.5)
    assert set(zip(i.tolist(), j.tolist())) == brute_pairs(x, threshold)
    assert (4, 5) in set(zip(i.tolist(), j.tolist()))


def test_groups_from_music_id_and_audio_are_transitive():
    ids = np.array(["a", "", "a", "b", "", "", "b"])
    audio = np.eye(7, 4, dtype=np.float32)
    audio[4] = audio[1] = [0, 1, 0, 0]  # items 1 and 4 have the same audio
    audio[5] = audio[2] = [0, 0, 1, 0]  # item 5 copies item 2's audio -> joins group "a"
    audio[3], audio[6] = [0, 0, 0, 1], [0.6, 0, 0, 0.8]
    g = find_groups(ids, audio, audio_threshold=0.98)
    assert g.labels.tolist() == [0, 1, 0, 2, 1, 0, 2]  # numbered by smallest member
    s = g.summary()
    assert s["groups"] == 3 and s["items_in_groups"] == 7 and s["largest"] == 3
    assert s["music_id_items"] == 4 and s["audio_dup_pairs"] == 2
    assert find_groups(ids, audio, use_music_id=False, audio_threshold=None).summary()["groups"] == 0
    assert "3 groups share a track" in g.describe()


def test_connected_components_labels_are_order_independent_of_edges():
    a, b = np.array([5, 3, 7, 0]), np.array([3, 1, 6, 0])
    labels = connected_components(8, a, b)
    assert labels.tolist() == [0, 1, 2, 1, 3, 1, 4, 4]
    assert connected_components(8, b[::-1], a[::-1]).tolist() == labels.tolist()


def test_group_members_count_as_hits():
    # item 0's video is closest to item 1's music; items 0 and 1 share a track
    video = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]], np.float32)
    audio = np.array([[0.6, 0.8], [1.0, 0.0], [-1.0, 0.1]], np.float32)
    v2m, m2v = retrieval_ranks(video, audio)
    assert v2m.tolist() == [2, 3, 1] and m2v.tolist() == [2, 2, 1]
    v2m_g, m2v_g = retrieval_ranks(video, audio, np.array([0, 0, 1]))
    assert v2m_g.tolist() == [1, 1, 1]  # a member of the right group is a hit
    assert summarize(v2m_g, (1,))["R@1"] == 1.0 > summarize(v2m, (1,))["R@1"]
    # a member of another group is still a miss: group item 0 with item 2 instead
    v2m_w, _ = retrieval_ranks(video, audio, np.array([0, 1, 0]))
    assert v2m_w.tolist()[:2] == [2, 3]  # item 1's music still beats item 0's group; item 1 unchanged
    assert m2v_g.tolist() == [1, 1, 1]


def test_hash_split_is_stable_and_keeps_groups_together():
    rng = np.random.default_rng(0)
    keys = np.array([f"{k:032x}" for k in rng.integers(0, 2**62, 3000)])
    groups = np.arange(3000) // 3  # groups of three
    split = assign_splits(keys, np.full(3000, ""), groups, val_fraction=0.1, test_fraction=0.2, salt="s")
    assert split.rule == "hash"
    counts = split.counts()
    assert abs(counts["test"] / 3000 - 0.2) < 0.04 and abs(counts["val"] / 3000 - 0.1) < 0.04
    for g in range(0, 1000, 37):
        assert len(set(split.names[groups == g])) == 1
    perm = rng.permutation(3000)  # any item order gives the same assignment
    again = assign_splits(keys[perm], np.full(3000, ""), groups[perm], val_fraction=0.1, test_fraction=0.2, salt="s")
    assert (again.names == split.names[perm]).all()
    other = assign_splits(keys, np.full(3000, ""), groups, val_fraction=0.1, test_fraction=0.2, salt="t")
    assert (other.names != split.names).any()


def test_manifest_split_is_used_and_checked():
    keys = np.array(["k0", "k1", "k2", "k3"])
    split = assign_splits(keys, np.array(["train", "Valid", "test", "dev"]), np.array([0, 1, 2, 2]),
                          val_fraction=0.1, test_fraction=0.1, salt="s")
    assert split.rule == "manifest" and split.names.tolist() == ["train", "val", "test", "val"]
    assert split.straddling_groups == 1
    with pytest.raises(SplitError, match="1 of 4 items have no manifest split"):
        assign_splits(keys, np.array(["train", "", "test", "val"]), np.arange(4), val_fraction=0.1,
                      test_fraction=0.1, salt="s", origins=np.array(["a.h5"] * 4))
    with pytest.raises(SplitError, match="unknown manifest split 'holdout'"):
        assign_splits(keys, np.array(["train", "holdout", "test", "val"]), np.arange(4), val_fraction=0.1,
                      test_fraction=0.1, salt="s")
