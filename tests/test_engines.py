"""Stage one's engines on real media: `gpus` with CPU "devices" (one spawned process each) and `ray` on a
real local Ray cluster, each producing the same cache (keys and embeddings) as the local runner."""

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from mvbind.cache import FeatureCache
from mvbind.errors import MvbindError
from mvbind.pipeline.config import load_config
from mvbind.pipeline.encoders.base import extractor_settings
from mvbind.stages.extract import extract
from tests.media import make_video


def signal_config(cache_dir, **overrides):
    base = {"encoder.name": "signal", "paths.cache": str(cache_dir), "extract.workers": 0}
    base.update(overrides)
    return load_config(overrides=base)


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("engine_videos")
    for i in range(6):
        make_video(folder / f"v{i}.mp4", duration=2.0 + 0.2 * i, size=(96, 160), freq=220 + 90 * i)
    make_video(folder / "silent.mp4", duration=2.0, audio_channels=None)
    (folder / "broken.mp4").write_bytes(b"not a video" * 40)
    return folder


def tiny_config(cache_dir, **overrides):
    """The tiny ImageBind (random init) built by the same code as the huge one."""
    base = {"encoder.arch": "tiny", "encoder.weights": "random", "encoder.device": "cpu",
            "paths.cache": str(cache_dir), "extract.workers": 0, "encoder.batch_size": 4}
    base.update(overrides)
    return load_config(overrides=base)


def cache_contents(cache_dir, make_config=signal_config):
    config = make_config(cache_dir)
    ns = FeatureCache(cache_dir).get(extractor_settings(config))
    feats = ns.load()
    order = np.argsort(feats.keys.astype(str))
    failed = sorted(os.path.basename(f.path) for f in ns.failures())
    return (feats.keys[order].tolist(), feats.audio[order], feats.audio_mask[order], feats.video[order], failed)


@pytest.fixture(scope="module")
def local_cache(videos, tmp_path_factory):
    cache = tmp_path_factory.mktemp("local_cache")
    summary = extract(signal_config(cache), videos, progress=False)
    assert summary.extracted == 7 and len(summary.failed) == 1
    return cache_contents(cache)


@pytest.fixture(scope="module")
def tiny_local_cache(videos, tmp_path_factory):
    cache = tmp_path_factory.mktemp("tiny_local_cache")
    summary = extract(tiny_config(cache), videos, progress=False)
    assert summary.extracted == 7 and len(summary.failed) == 1
    return cache_contents(cache, tiny_config)


def assert_same_cache(got, want, *, fp16_steps: int = 0):
    """Same keys, masks and failures; embeddings bit for bit (the same code on the same inputs), or within
    `fp16_steps` steps of their fp16 storage where processes may differ in threads or input transforms."""
    keys, audio, audio_mask, video, failed = got
    assert keys == want[0] and failed == want[4] == ["broken.mp4"]
    np.testing.assert_array_equal(audio_mask, want[2])
    for a, b in ((audio, want[1]), (video, want[3])):
        if not fp16_steps:
            np.testing.assert_array_equal(a, b)
            continue
        a, b = a.astype(np.float32), b.astype(np.float32)
        step = np.spacing(np.maximum(np.abs(a), np.abs(b)).astype(np.float16)).astype(np.float32)
        assert np.all(np.abs(a - b) <= fp16_steps * step)


def test_gpus_engine_with_cpu_devices_fills_the_same_cache_as_local(videos, local_cache, tmp_path):
    config = signal_config(tmp_path / "cache", **{"extract.engine": "gpus", "extract.devices": "cpu,cpu"})
    summary = extract(config, videos, progress=False)
    assert (summary.extracted, len(summary.failed), summary.other_partition) == (7, 1, 0)
    assert summary.hashed == 0 and summary.planned == 8  # the engine planned first: each file hashed once
    assert_same_cache(cache_contents(tmp_path / "cache"), local_cache)
    names = os.listdir(FeatureCache(tmp_path / "cache").get(extractor_settings(config)).shard_dir)
    assert {n[:13] for n in names} == {"p00000of00002", "p00001of00002"}  # one partition per process
    again = extract(config, videos, progress=False)  # resumes: nothing to do
    assert (again.extracted, again.reused, again.skipped_failed) == (0, 7, 1)


def test_gpus_engine_with_tiny_imagebind_fills_the_same_cache_as_local(videos, tiny_local_cache, tmp_path):
    config = tiny_config(tmp_path / "cache", **{"extract.engine": "gpus", "extract.devices": "cpu,cpu"})
    summary = extract(config, videos, progress=False)
    assert (summary.extracted, len(summary.failed), summary.without_audio) == (7, 1, 1)
    assert_same_cache(cache_contents(tmp_path / "cache", tiny_config), tiny_local_cache, fp16_steps=1)


def test_gpus_engine_splits_this_machines_partition_and_refuses_without_devices(videos, local_cache, tmp_path):
    # Machine 1 of 2 with two devices runs partitions 1 and 3 of 4: exactly machine 1's items.
    config = signal_config(tmp_path / "cache", **{"extract.engine": "gpus", "extract.devices": "cpu,cpu",
                                                  "extract.num_shards": 2, "extract.shard_index": 1})
    mine = extract(config, videos, progress=False)
    alone = extract(signal_config(tmp_path / "alone", **{"extract.num_shards": 2, "extract.shard_index": 1}), videos,
                    progress=False)
    assert mine.extracted == alone.extracted and mine.other_partition == alone.other_partition
    assert cache_contents(tmp_path / "cache")[0] == cache_contents(tmp_path / "alone")[0]
    if not torch.cuda.is_available():
        with pytest.raises(MvbindError, match="setting extract.devices: no GPU is visible for engine gpus"):
            extract(signal_config(tmp_path / "c2", **{"extract.engine": "gpus"}), videos, progress=False)


ray = pytest.importorskip("ray", reason="the ray engine needs the optional extra: pip install 'mvbind[ray]'")


@pytest.fixture(scope="module")
def ray_cluster():
    ray.init(num_cpus=2, object_store_memory=100 * 1024 * 1024, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def test_ray_engine_one_task_per_partition_fills_the_same_cache_as_local(ray_cluster, videos, local_cache, tmp_path):
    config = signal_config(tmp_path / "cache", **{"extract.engine": "ray", "extract.num_shards": 3})
    summary = extract(config, videos, progress=False)
    assert (summary.extracted, len(summary.failed), summary.hashed) == (7, 1, 0)
    assert_same_cache(cache_contents(tmp_path / "cache"), local_cache)
    prefixes = {n[:13] for n in os.listdir(FeatureCache(tmp_path / "cache").get(extractor_settings(config)).shard_dir)}
    assert prefixes <= {f"p{i:05d}of00003" for i in range(3)} and len(prefixes) >= 2


def test_ray_engine_records_a_hung_item_as_failed(ray_cluster, videos, tmp_path):
    folder = tmp_path / "v"
    shutil.copytree(videos, folder)
    os.mkfifo(folder / "hung.mp4")  # nobody writes it: a read blocks for good
    config = signal_config(tmp_path / "cache", **{"extract.engine": "ray", "extract.num_shards": 2,
                                                  "extract.item_timeout": "2"})
    summary = extract(config, folder, progress=False)
    failed = {Path(p).name: r for p, r in summary.failed}
    assert summary.extracted == 7 and failed["hung.mp4"] == "timed out after 2s (extract.item_timeout)"


def test_ray_engine_retries_a_partition_whose_process_died(ray_cluster, videos, local_cache, tmp_path):
    # The partition's task blocks on a named pipe (first in the listing), is killed with SIGKILL, and Ray
    # runs it again (extract.max_retries): the retry finds a regular file there and finishes the partition.
    import json
    import signal
    import threading
    import time

    folder = tmp_path / "v"
    shutil.copytree(videos, folder)
    hung = folder / "a_hung.mp4"
    os.mkfifo(hung)
    cache = tmp_path / "cache"
    config = signal_config(cache, **{"extract.engine": "ray", "extract.max_retries": "2"})
    result = {}
    runner = threading.Thread(target=lambda: result.update(summary=extract(config, folder, progress=False)))
    runner.start()
    progress = list(cache.glob("*/progress/partition-0-of-1.json"))
    deadline = time.monotonic() + 120
    while not progress and time.monotonic() < deadline:
        time.sleep(0.1)
        progress = list(cache.glob("*/progress/partition-0-of-1.json"))
    assert progress, "the partition task did not start within 120 s"
    killed = json.loads(progress[0].read_text())["pid"]
    time.sleep(1.0)  # it is blocked opening the pipe
    hung.unlink()
    shutil.copy(videos / "v0.mp4", hung)  # a copy: same content key as v0.mp4
    os.kill(killed, signal.SIGKILL)
    runner.join(timeout=300)
    assert not runner.is_alive() and "summary" in result
    summary = result["summary"]
    assert summary.extracted + summary.duplicates == 8 and json.loads(progress[0].read_text())["pid"] != killed
    assert_same_cache(cache_contents(cache), local_cache)


def test_ray_engine_with_tiny_imagebind_and_device_transforms(ray_cluster, videos, tiny_local_cache, tmp_path):
    # The tasks' workers ship compact inputs (uint8 pixels, clip waves) that the task's embedder finishes.
    config = tiny_config(tmp_path / "cache", **{"extract.engine": "ray", "extract.num_shards": 2,
                                                "encoder.transforms": "device", "extract.workers": 1})
    summary = extract(config, videos, progress=False)
    assert (summary.extracted, len(summary.failed), summary.hashed) == (7, 1, 0)
    assert_same_cache(cache_contents(tmp_path / "cache", tiny_config), tiny_local_cache, fp16_steps=1)
