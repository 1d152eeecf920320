"""The feature cache on real HDF5 files in a temp dir: shards, namespaces, locks, failures."""

import hashlib
import os
import signal
import subprocess
import sys
import textwrap
import time

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from mvbind.cache import CacheError, FeatureCache, Row, fingerprint, partition_of
from mvbind.cache.namespace import verify_namespace
from mvbind.cache.shards import TMP_PREFIX
from mvbind.cli import cli
from mvbind.stages.cache_info import format_info

SETTINGS = {"encoder": {"name": "test"}, "shapes": {"audio": [3, 8], "video": [15, 8]}}


def rows(n, start=0, rng=None):
    rng = rng or np.random.default_rng(start)
    return [
        Row(key=f"{i:032x}", path=f"/videos/{i}.mp4",
            audio=None if i % 3 == 0 else rng.standard_normal((3, 8)),
            video=rng.standard_normal((15, 8)), duration=1.0 + i, music_id=f"m{i % 2}",
            split=["train", "val", "test"][i % 3])
        for i in range(start, start + n)
    ]


def test_roundtrip_fp16_masks_and_metadata(tmp_path):
    ns = FeatureCache(tmp_path).create(SETTINGS)
    written = rows(7)
    ns.write_shard(written)
    feats = ns.load()
    assert len(feats) == 7
    assert feats.audio.dtype == np.float16 and feats.audio.shape == (7, 3, 8)
    assert feats.video.shape == (7, 15, 8)
    for i, r in enumerate(written):
        assert feats.keys[i] == r.key and feats.paths[i] == r.path
        assert feats.audio_mask[i] == (r.audio is not None)
        if r.audio is not None:
            np.testing.assert_array_equal(feats.audio[i], r.audio.astype(np.float16))
        else:
            assert not feats.audio[i].any()
        np.testing.assert_array_equal(feats.video[i], r.video.astype(np.float16))
        assert feats.music_ids[i] == r.music_id and feats.splits[i] == r.split
        assert feats.duration[i] == pytest.approx(r.duration)
    assert ns.committed_keys() == {r.key for r in written}


def test_non_utf8_path_survives(tmp_path):
    ns = FeatureCache(tmp_path).create(SETTINGS)
    weird = os.fsdecode(b"/videos/caf\xe9-\xff.mp4")
    ns.write_shard([Row(key="a" * 32, path=weird, audio=None, video=np.zeros((15, 8)), duration=1.0)])
    assert ns.load().paths[0] == weird


def test_namespace_is_the_fingerprint(tmp_path):
    cache = FeatureCache(tmp_path)
    a = cache.create(SETTINGS)
    assert cache.create(SETTINGS).root == a.root  # same settings: same namespace
    other = {**SETTINGS, "video": {"remove_borders": False}}
    b = cache.create(other)
    assert b.root != a.root and b.fingerprint == fingerprint(other)
    assert cache.find(a.fingerprint[:6]).root == a.root
    assert cache.get(SETTINGS).root == a.root
    with pytest.raises(CacheError, match="no cache namespace matches 'zzz'"):
        cache.find("zzz")
    with pytest.raises(CacheError, match="matches 2 namespaces"):
        cache.find("")
    with pytest.raises(CacheError, match="run `mvbind extract`"):
        cache.get({**SETTINGS, "x": 1})
    assert {ns.fingerprint for ns in cache.namespaces()} == {a.fingerprint, b.fingerprint}


def test_shards_never_overwritten_and_temp_files_invisible(tmp_path):
    ns = FeatureCache(tmp_path).create(SETTINGS)
    path = ns.write_shard(rows(2))
    from mvbind.cache.shards import write_shard

    with pytest.raises(FileExistsError, match="refusing to overwrite"):
        write_shard(path.parent, path.name, rows(1), audio_shape=(3, 8), video_shape=(15, 8), attrs={})
    # A crashed writer's temp file: not listed, and removed only by its own partition.
    mine = ns.shard_dir / f"{TMP_PREFIX}deadbeef-p00001of00002-x.h5"
    theirs = ns.shard_dir / f"{TMP_PREFIX}cafebabe-p00000of00002-x.h5"
    mine.write_bytes(b"partial")
    theirs.write_bytes(b"partial")
    assert ns.shard_paths() == [path]
    assert ns.clean_temp_files(partition=1, num_partitions=2) == 1
    assert not mine.exists() and theirs.exists()


def test_damaged_shard_is_quarantined_and_named(tmp_path, caplog):
    ns = FeatureCache(tmp_path).create(SETTINGS)
    good = ns.write_shard(rows(3))
    bad = ns.write_shard(rows(3, start=10))
    data = bad.read_bytes()
    bad.write_bytes(data[: len(data) // 3])  # truncated
    with caplog.at_level("WARNING"):
        feats = ns.load()
    assert len(feats) == 3 and set(feats.keys) == {r.key for r in rows(3)}
    assert bad.name in caplog.text
    assert (ns.root / "quarantine" / bad.name).exists()
    assert (ns.root / "quarantine" / (bad.name + ".reason")).read_text().startswith("unreadable HDF5")
    assert good.exists()


def test_inconsistent_shard_is_reported(tmp_path):
    ns = FeatureCache(tmp_path).create(SETTINGS)
    path = ns.write_shard(rows(3))
    with h5py.File(path, "a") as f:
        del f["duration"]
        f.create_dataset("duration", data=np.zeros(2, np.float32))
    from mvbind.cache.shards import DamagedShard, read_shard

    with pytest.raises(DamagedShard, match="'duration' has 2 rows, expected 3"):
        read_shard(path)


def test_duplicate_keys_across_shards_load_once(tmp_path):
    ns = FeatureCache(tmp_path).create(SETTINGS)
    ns.write_shard(rows(3))
    ns.write_shard(rows(2, start=1))
    feats = ns.load()
    assert sorted(feats.keys) == sorted({r.key for r in rows(3)})


def test_failure_log(tmp_path):
    ns = FeatureCache(tmp_path).create(SETTINGS)
    ns.record_failure("/v/a.mp4", "corrupt file\nsecond line is dropped")
    ns.record_failure(os.fsdecode(b"/v/\xff.mp4"), "no video stream")
    with open(ns.failure_log, "a") as f:
        f.write('{"path": "/v/torn')  # a line torn by a crash
    ns.record_failure("/v/a.mp4", "still corrupt")
    ns.record_resolved(os.fsdecode(b"/v/\xff.mp4"), "k")
    failures = ns.failures()
    assert [(f.path, f.reason) for f in failures] == [("/v/a.mp4", "still corrupt")]


def test_partition_is_stable_and_balanced():
    keys = [hashlib.sha256(str(i).encode()).hexdigest()[:32] for i in range(4000)]
    assert partition_of("0" * 15 + "5" + "f" * 16, 4) == 1  # the key's leading 64 bits, mod N
    counts = np.bincount([partition_of(k, 4) for k in keys], minlength=4)
    assert counts.sum() == 4000 and counts.min() > 0


HOLD_LOCK = textwrap.dedent("""
    import sys, time
    from mvbind.cache import FeatureCache
    ns = FeatureCache(sys.argv[1]).create({"encoder": {"name": "test"}, "shapes": {"audio": [3, 8], "video": [15, 8]}})
    with ns.lock(0, 1):
        print("locked", flush=True)
        time.sleep(60)
""")


def test_lock_excludes_a_second_writer_and_dies_with_its_holder(tmp_path):
    ns = FeatureCache(tmp_path).create(SETTINGS)
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(CacheError, match=r"another extract is writing partition 0 of 1 \(pid \d+"):
            with ns.lock(0, 1):
                pass
        with ns.lock(1, 2):  # another partition is free
            pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    deadline = time.monotonic() + 10
    while True:  # the kernel drops a killed holder's lock
        try:
            with ns.lock(0, 1):
                break
        except CacheError:
            assert time.monotonic() < deadline
            time.sleep(0.1)


def test_info_counts_unique_keys_and_names_damaged_shards(tmp_path):
    # The same key committed twice (two partitions racing, overlapping runs) is one item; a shard
    # that can't be read is reported by name, not silently left out of the counts.
    ns = FeatureCache(tmp_path).create(SETTINGS)
    a, b, c, d = rows(4, start=1)  # row 3 (c) has no audio
    ns.write_shard([a, b])
    ns.write_shard([b, c])
    bad = ns.write_shard([d])
    bad.write_bytes(bad.read_bytes()[:200])  # truncated: unreadable
    info = ns.info()
    assert info["items"] == 3 and info["duplicate_rows"] == 1 and info["items_without_audio"] == 1
    assert len(info["damaged_shards"]) == 1 and info["damaged_shards"][0].startswith(bad.name)
    lines = format_info([info], tmp_path)
    assert any("1 duplicate row(s)" in ln for ln in lines) and any(f"damaged shard {bad.name}" in ln for ln in lines)


def _flip_inside(path, dataset):
    """Flip one byte in the middle of `dataset`'s first stored chunk (the embeddings themselves)."""
    with h5py.File(path, "r") as f:
        info = f[dataset].id.get_chunk_info(0)
    with open(path, "r+b") as fh:
        fh.seek(info.byte_offset + info.size // 2)
        byte = fh.read(1)
        fh.seek(-1, os.SEEK_CUR)
        fh.write(bytes([byte[0] ^ 0xFF]))


@pytest.mark.parametrize("dataset", ["audio", "video"])
def test_a_flipped_byte_inside_an_embedding_block_is_detected(tmp_path, dataset):
    # Fletcher-32 per chunk: the damage is a read error (quarantine, re-extract), never a wrong vector.
    ns = FeatureCache(tmp_path).create(SETTINGS)
    good = ns.write_shard(rows(4))
    bad = ns.write_shard(rows(4, start=4))
    _flip_inside(bad, dataset)
    report = verify_namespace(ns)
    assert [d["shard"] for d in report["damaged"]] == [bad.name] and report["items"] == 4
    assert "checksum" in report["damaged"][0]["reason"].lower()
    result = CliRunner().invoke(cli, ["cache", "verify", "--cache-dir", str(tmp_path)])
    assert result.exit_code == 1 and f"damaged {bad.name}" in result.output
    assert bad.exists()  # verify reports; it moves nothing
    feats = ns.load()  # a reader quarantines it and goes on with the rest
    assert len(feats) == 4 and not bad.exists() and (ns.root / "quarantine" / bad.name).exists() and good.exists()


def test_writer_thread_commits_in_order_and_its_error_surfaces_in_the_caller(tmp_path):
    from mvbind.pipeline.writer import ShardWriter

    ns = FeatureCache(tmp_path).create(SETTINGS)
    committed = []
    writer = ShardWriter(ns, partition=1, num_partitions=2, depth=1, on_commit=lambda name, n: committed.append(n))
    for start in (0, 5, 10):
        writer.put(rows(5, start) if start != 5 else rows(2, start))
    writer.close()
    assert committed == [5, 2, 5] and len(writer.shards) == 3
    assert [n for n in writer.shards if n.startswith("p00001of00002-")] == writer.shards
    assert sorted(ns.load().keys) == [r.key for r in rows(5) + rows(2, 5) + rows(5, 10)]

    # A commit that fails in the writer thread (here: a file where the shard folder should be) is raised
    # by the caller's next put or by close, once; the queued rows behind it are not committed.
    broken = FeatureCache(tmp_path / "broken").create(SETTINGS)
    broken.shard_dir.write_text("not a folder")
    writer = ShardWriter(broken, partition=0, num_partitions=1, depth=1)
    with pytest.raises(FileExistsError):
        for start in range(0, 50, 5):
            writer.put(rows(5, start))
        writer.close()
    writer.close()  # reported once; the thread is gone
    assert writer.shards == [] and not writer._thread.is_alive()
