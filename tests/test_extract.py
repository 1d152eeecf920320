"""Stage one end to end: real ffmpeg media, a real tiny ImageBind, real HDF5 shards, real SIGKILL."""

import contextlib
import csv
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from mvbind.cache import CacheError, FeatureCache, content_key
from mvbind.cache.shards import TMP_PREFIX
from mvbind.pipeline.config import load_config
from mvbind.pipeline.encoders.base import extractor_settings
from mvbind.pipeline.encoders.imagebind.audio import audio_inputs
from mvbind.pipeline.encoders.imagebind.model import build_imagebind
from mvbind.pipeline.encoders.imagebind.vision import video_inputs
from mvbind.pipeline.media.inputs import InputItem
from mvbind.stages.extract import extract
from tests.media import make_video, run_ffmpeg

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_thread")  # a tiny model: a second thread only adds hand-offs


def tiny_config(cache_dir, **overrides):
    base = {"encoder.arch": "tiny", "encoder.weights": "random", "paths.cache": str(cache_dir),
            "extract.workers": 0, "encoder.batch_size": 3}
    base.update(overrides)
    return load_config(overrides=base)


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("videos")
    make_video(folder / "a.mp4", duration=3.0, freq=330)
    make_video(folder / "b.mp4", duration=2.5, size=(96, 160), freq=660, audio_channels=2)
    make_video(folder / "sub" / "c.webm", duration=2.0, size=(120, 120), freq=880)
    make_video(folder / "boxed.mp4", duration=2.0, size=(160, 90), pad=(160, 288), freq=440)
    return folder


def test_extract_embeds_every_clip_like_the_model_does(videos, tmp_path):
    config = tiny_config(tmp_path / "cache", **{"extract.workers": 2})
    summary = extract(config, videos, progress=False)
    assert (summary.extracted, summary.reused, len(summary.failed)) == (4, 0, 0)
    ns = FeatureCache(tmp_path / "cache").get(extractor_settings(config))
    feats = ns.load()
    assert feats.audio.shape == (4, 3, 32) and feats.video.shape == (4, 15, 32)
    assert feats.audio.dtype == np.float16 and feats.audio_mask.all() and feats.video_mask.all()

    # Independent path: the same preprocessing and model called directly, one file at a time.
    model = build_imagebind("tiny", seed=0).eval()
    for key, path, audio, video in zip(feats.keys, feats.paths, feats.audio, feats.video):
        assert key == content_key(path)
        with torch.inference_mode():
            ref_a = model.embed_audio(audio_inputs(path, config.audio).melspec).numpy()
            ref_v = model.embed_vision(video_inputs(path, config.video).frames).numpy()
        np.testing.assert_allclose(audio.astype(np.float32), ref_a, rtol=2e-3, atol=2e-2)  # rows have norm 20
        np.testing.assert_allclose(video.astype(np.float32), ref_v, rtol=2e-3, atol=2e-3)
    np.testing.assert_allclose(np.linalg.norm(feats.video.astype(np.float32), axis=-1), 1.0, atol=2e-3)


def test_rerun_renamed_copy_and_settings_change(videos, tmp_path):
    config = tiny_config(tmp_path / "cache")
    first = extract(config, videos, progress=False)
    ns = FeatureCache(tmp_path / "cache").get(extractor_settings(config))
    shards = ns.shard_paths()
    assert first.extracted == 4

    assert first.model_seconds is not None and "model load" in "\n".join(first.lines())
    text = "\n".join(first.lines())
    assert "decode wait" in text and "(writer thread); 1 shard(s) committed" in text
    again = extract(config, videos, progress=False)  # nothing decoded, nothing written, no model built
    assert (again.extracted, again.reused, again.shards) == (0, 4, [])
    assert again.model_seconds is None and "model not loaded (nothing to embed)" in "\n".join(again.lines())
    assert ns.shard_paths() == shards

    copies = tmp_path / "copies"
    copies.mkdir()
    shutil.copy(videos / "a.mp4", copies / "renamed.mp4")
    shutil.copy(videos / "a.mp4", copies / "twin.mp4")
    make_video(copies / "new.mp4", duration=2.0, freq=1000)
    third = extract(config, copies, progress=False)
    assert (third.extracted, third.reused, third.duplicates) == (1, 2, 0)

    no_borders = tiny_config(tmp_path / "cache", **{"video.remove_borders": "false"})
    other = extract(no_borders, videos, progress=False)
    assert other.extracted == 4 and other.namespace != first.namespace
    assert len(FeatureCache(tmp_path / "cache").namespaces()) == 2


def test_duplicate_content_in_one_run_is_extracted_once(videos, tmp_path):
    folder = tmp_path / "dups"
    folder.mkdir()
    shutil.copy(videos / "a.mp4", folder / "one.mp4")
    shutil.copy(videos / "a.mp4", folder / "two.mp4")
    summary = extract(tiny_config(tmp_path / "cache"), folder, progress=False)
    assert (summary.extracted, summary.duplicates) == (1, 1)


@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad")
    good = make_video(d / "good.mp4", duration=2.0)
    data = good.read_bytes()
    assert data.rfind(b"moov") > len(data) // 2  # ffmpeg writes the mp4 index (moov) after the media data
    (d / "truncated.mp4").write_bytes(data[: len(data) // 2])  # a cut-off download: frames without their index
    whole = make_video(d / "whole.mp4", duration=4.0, extra=("-movflags", "+faststart"))  # index first
    fast = whole.read_bytes()
    assert fast.find(b"moov") < fast.find(b"mdat")
    (d / "truncated_faststart.mp4").write_bytes(fast[: len(fast) // 2])  # index intact, second half missing
    whole.unlink()
    (d / "garbage.mp4").write_bytes(data[:64] + os.urandom(4000))
    (d / "zero.mp4").write_bytes(b"")
    (d / "text.mp4").write_text("this is not a video\n")
    run_ffmpeg("-f", "lavfi", "-i", "sine=frequency=440:duration=2", "-c:a", "aac", "-f", "mp4",
               str(d / "audio_only.mp4"))
    make_video(d / "silent.mp4", duration=2.0, audio_channels=None)
    make_video(d / "short.mp4", duration=0.3)
    # mp2 audio: ffmpeg's AAC encoder takes seconds for 200 s; the point of this file is its length
    make_video(d / "long.mp4", duration=200.0, size=(64, 64), fps=5, sample_rate=8000, acodec="mp2")
    make_video(d / "full_hd.mp4", duration=1.0, size=(1920, 1080), fps=10)
    make_video(d / "tiny.mp4", duration=2.0, size=(128, 96))
    make_video(d / "stereo.mov", duration=2.0, audio_channels=2)
    make_video(d / "six.mkv", duration=2.0, audio_channels=6)
    make_video(d / "vfr.mp4", duration=3.0, extra=("-vf", "setpts='if(lt(N,10),N*2,N+10)/15/TB'", "-fps_mode", "vfr"))
    make_video(d / "old.mkv", duration=2.0, vcodec="msmpeg4v2", acodec="mp2")
    make_video(d / "clip.webm", duration=2.0)
    make_video(d / "clip.ogv", duration=2.0)
    make_video(d / "clip.avi", duration=2.0)
    make_video(d / "clip.m4v", duration=2.0)
    make_video(d / os.fsdecode(b"caf\xe9-\xff.mp4"), duration=2.0, freq=200)
    return d


EXPECT_FAILED = {"garbage.mp4", "zero.mp4", "text.mp4", "audio_only.mp4", "vanished.mp4", "truncated.mp4"}
EXPECT_OK = {"good.mp4", "truncated_faststart.mp4", "silent.mp4", "short.mp4", "long.mp4", "full_hd.mp4", "tiny.mp4",
             "stereo.mov", "six.mkv", "vfr.mp4", "old.mkv", "clip.webm", "clip.ogv", "clip.avi", "clip.m4v",
             os.fsdecode(b"caf\xe9-\xff.mp4")}


def test_bad_input_never_stops_a_run(bad_inputs, tmp_path):
    from mvbind.pipeline.media.inputs import list_inputs

    items = list_inputs(bad_inputs)
    vanished = tmp_path / "vanished.mp4"
    shutil.copy(bad_inputs / "good.mp4", vanished)
    items.insert(3, InputItem(path=str(vanished)))
    vanished.unlink()  # listed, then gone before it is read

    config = tiny_config(tmp_path / "cache", **{"extract.workers": 2})
    summary = extract(config, items, progress=False)
    failed = {Path(p).name: reason for p, reason in summary.failed}
    ns = FeatureCache(tmp_path / "cache").get(extractor_settings(config))
    feats = ns.load()
    ok = {Path(p).name for p in feats.paths}
    assert EXPECT_FAILED <= set(failed), failed
    assert EXPECT_OK <= ok, failed
    assert set(failed) | ok == {Path(i.path).name for i in items}  # every input accounted for
    for name, reason in failed.items():
        assert reason and "\n" not in reason and len(reason) < 200, (name, reason)
    assert "no video stream" in failed["audio_only.mp4"]
    assert "not found" in failed["vanished.mp4"]
    # Without its index an mp4's frames can't be located, so the cut-off file fails, saying it can't be opened;
    # with the index at the front, the frames that arrived are embedded, and its duration is what they cover.
    assert failed["truncated.mp4"].startswith("cannot open"), failed["truncated.mp4"]

    rows = {Path(p).name: i for i, p in enumerate(feats.paths)}
    assert not feats.audio_mask[rows["silent.mp4"]] and feats.video_mask[rows["silent.mp4"]]
    assert summary.without_audio >= 1
    for name in EXPECT_OK - {"silent.mp4"}:
        assert feats.audio_mask[rows[name]], name
    assert np.isfinite(feats.video.astype(np.float32)).all() and np.isfinite(feats.audio.astype(np.float32)).all()
    assert feats.duration[rows["long.mp4"]] == pytest.approx(200.0, abs=0.5)
    assert 1.0 < feats.duration[rows["truncated_faststart.mp4"]] < 3.5  # of 4 s
    assert feats.paths[rows[os.fsdecode(b"caf\xe9-\xff.mp4")]] == str(bad_inputs / os.fsdecode(b"caf\xe9-\xff.mp4"))

    # One log line per failed item; a rerun skips them unless asked to retry.
    logged = ns.failure_log.read_text().splitlines()
    assert len(logged) == len(failed)
    again = extract(config, items, progress=False)
    assert again.extracted == 0 and again.skipped_failed == len(failed) and again.reused == len(ok)


def test_retry_failed(tmp_path):
    # A failure is remembered with the file's content key: the same bad content is skipped on the
    # next run (until --retry-failed); a file replaced with new content is simply tried again.
    folder = tmp_path / "v"
    folder.mkdir()
    (folder / "later.mp4").write_bytes(b"")
    (folder / "broken.mp4").write_bytes(b"not a video" * 50)
    config = tiny_config(tmp_path / "cache")
    assert len(extract(config, folder, progress=False).failed) == 2
    again = extract(config, folder, progress=False)
    assert again.skipped_failed == 2 and not again.failed and again.extracted == 0
    make_video(folder / "later.mp4", duration=2.0)  # fixed by the user: new content
    fixed = extract(config, folder, progress=False)
    assert fixed.extracted == 1 and fixed.skipped_failed == 1 and not fixed.failed
    retry = extract(tiny_config(tmp_path / "cache", **{"extract.retry_failed": "true"}), folder, progress=False)
    assert retry.reused == 1 and [os.path.basename(p) for p, _ in retry.failed] == ["broken.mp4"]
    ns = FeatureCache(tmp_path / "cache").get(extractor_settings(config))
    assert [os.path.basename(f.path) for f in ns.failures()] == ["broken.mp4"]


def test_partitions_fill_one_namespace_without_overlap(videos, tmp_path):
    keys = []
    for i in range(2):
        config = tiny_config(tmp_path / "cache", **{"extract.num_shards": 2, "extract.shard_index": i})
        s = extract(config, videos, progress=False)
        assert s.extracted + s.other_partition == 4
        ns = FeatureCache(tmp_path / "cache").get(extractor_settings(config))
        keys.append(set(ns.load().keys) - set().union(*keys) if keys else set(ns.load().keys))
    assert keys[0].isdisjoint(keys[1])
    assert keys[0] | keys[1] == {content_key(p) for p in videos.rglob("*.*")}
    assert all(name.startswith(("p00000of00002", "p00001of00002")) for name in os.listdir(ns.shard_dir))


def test_second_extract_on_a_locked_partition_is_refused(videos, tmp_path):
    config = tiny_config(tmp_path / "cache")
    ns = FeatureCache(tmp_path / "cache").create(extractor_settings(config))
    hold = ("import sys, time\nfrom cache.namespace import Namespace\n"
            "with Namespace(sys.argv[1]).lock(0, 1):\n    print('locked', flush=True)\n    time.sleep(60)\n")
    holder = subprocess.Popen([sys.executable, "-c", hold, str(ns.root)], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(CacheError, match="another extract is writing partition 0 of 1"):
            extract(config, videos, progress=False)
        from mvbind.cli import cli

        result = CliRunner().invoke(cli, ["extract", str(videos), "--arch", "tiny", "--weights", "random",
                                          "--cache-dir", str(tmp_path / "cache"), "--workers", "0"])
        assert result.exit_code == 2
        assert result.output.startswith("error: ") and result.output.count("\n") == 1
    finally:
        holder.kill()
        holder.wait()


@pytest.fixture(scope="module")
def many_videos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("many")
    for i in range(8):
        make_video(folder / f"v{i:02d}.mp4", duration=2.0 + 0.25 * i, size=(96, 160), freq=200 + 60 * i)
    return folder


def committed_shards(cache_dir: Path) -> list[Path]:
    """Shards committed in any namespace under cache_dir (written under a temp name, then renamed into place)."""
    return [p for p in cache_dir.glob("*/shards/*.h5") if not p.name.startswith(TMP_PREFIX)]


def test_sigkill_mid_run_then_resume_matches_an_uninterrupted_run(many_videos, tmp_path):
    # The killed run can't finish first, however slow the machine: halfway down its list is a named pipe that
    # nobody writes to (a file on a hung mount), and reading it blocks for good. One item per batch and per
    # shard, so the items before it are committed one at a time; it is killed at the first commit it makes.
    videos = sorted(many_videos.glob("*.mp4"))
    half = len(videos) // 2
    stalled = tmp_path / "stalled.mp4"
    os.mkfifo(stalled)
    manifest = tmp_path / "videos.csv"
    with open(manifest, "w", newline="") as f:
        csv.writer(f).writerows([["path"], *([str(p)] for p in [*videos[:half], stalled, *videos[half:]])])
    crashed = tmp_path / "crashed"
    log = tmp_path / "crashed.log"
    with open(log, "wb") as stderr:
        proc = subprocess.Popen(
            [sys.executable, str(ROOT / "cli.py"), "extract", str(manifest), "--cache-dir", str(crashed), "--arch",
             "tiny", "--weights", "random", "--workers", "0", "--batch-size", "1", "--set", "extract.shard_size=1"],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 120
        while not committed_shards(crashed) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert proc.poll() is None, f"extract exited with {proc.returncode}: {log.read_text()[-2000:]}"
        assert committed_shards(crashed), "extract committed no shard within 120 s"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # its whole process group
        proc.wait()
    assert proc.returncode == -signal.SIGKILL

    config = tiny_config(crashed, **{"extract.shard_size": 4})
    ns = FeatureCache(crashed).get(extractor_settings(config))
    survived = ns.committed_keys()
    assert 1 <= len(survived) <= half  # committed before the kill, none past the pipe

    resumed = extract(config, many_videos, progress=False)
    assert resumed.reused == len(survived) and resumed.extracted == len(videos) - len(survived)
    assert not list(ns.shard_dir.glob(TMP_PREFIX + "*"))

    clean = extract(tiny_config(tmp_path / "clean"), many_videos, progress=False)
    assert clean.extracted == len(videos)
    a = ns.load()
    b = FeatureCache(tmp_path / "clean").get(extractor_settings(config)).load()
    order_a, order_b = np.argsort(a.keys.astype(str)), np.argsort(b.keys.astype(str))
    assert list(a.keys[order_a]) == list(b.keys[order_b])
    np.testing.assert_allclose(a.audio[order_a].astype(np.float32), b.audio[order_b].astype(np.float32), atol=2e-2)
    np.testing.assert_allclose(a.video[order_a].astype(np.float32), b.video[order_b].astype(np.float32), atol=2e-3)


def test_cli_extract_and_cache_info(videos, tmp_path):
    from mvbind.cli import cli

    runner = CliRunner()
    args = ["--arch", "tiny", "--weights", "random", "--cache-dir", str(tmp_path / "c"), "--workers", "0"]
    result = runner.invoke(cli, ["extract", str(videos), *args])
    assert result.exit_code == 0, result.output
    assert "extracted 4, reused from cache 0" in result.output
    planned = runner.invoke(cli, ["extract", str(videos), *args, "--plan-only", "--num-shards", "2"])
    assert planned.exit_code == 0 and "4 inputs, 4 hashed" in planned.output, planned.output
    info = runner.invoke(cli, ["cache", "info", "--cache-dir", str(tmp_path / "c")])
    assert info.exit_code == 0, info.output
    assert "imagebind/tiny weights=random-init seed 0" in info.output and "items=4" in info.output
    bad = runner.invoke(cli, ["extract", str(tmp_path / "missing"), *args])
    assert bad.exit_code == 2 and "no such folder or manifest" in bad.output
    bad = runner.invoke(cli, ["extract", str(videos), *args, "--set", "extract.shard_size=0"])
    assert bad.exit_code == 2 and "setting extract.shard_size: must be >= 1, got 0" in bad.output


def sorted_features(cache_dir, config):
    feats = FeatureCache(cache_dir).get(extractor_settings(config)).load()
    order = np.argsort(feats.keys.astype(str))
    return feats.keys[order].tolist(), feats.audio[order].astype(np.float32), feats.video[order].astype(np.float32)


def test_plan_hashes_each_input_once_and_partition_jobs_take_their_items_from_it(videos, tmp_path):
    from mvbind.stages.extract import plan

    folder = tmp_path / "v"
    shutil.copytree(videos, folder)
    (folder / "broken.mp4").write_bytes(b"not a video" * 50)
    part = {"extract.num_shards": 2}
    planned = plan(tiny_config(tmp_path / "cache", **part), folder, progress=False)
    assert planned.inputs == 5 and sum(planned.per_partition) == 5 and planned.unreadable == 0
    assert Path(planned.path).parent.name == "plans" and Path(planned.path).exists()

    def jobs(**more):
        return [extract(tiny_config(tmp_path / "cache", **part, **{"extract.shard_index": i}, **more), folder,
                        progress=False) for i in range(2)]

    first = jobs()
    assert [j.hashed for j in first] == [0, 0] and [j.planned for j in first] == [5, 5]  # nobody read to hash
    assert sum(j.extracted for j in first) == 4 and sum(len(j.failed) for j in first) == 1
    assert sum(j.other_partition for j in first) == 5
    # The same cache as one job without a plan (which reads every file to hash it).
    alone = extract(tiny_config(tmp_path / "alone"), folder, progress=False)
    assert alone.hashed == 5 and alone.planned == 0
    keys_a, audio_a, video_a = sorted_features(tmp_path / "cache", tiny_config(tmp_path / "cache"))
    keys_b, audio_b, video_b = sorted_features(tmp_path / "alone", tiny_config(tmp_path / "alone"))
    assert keys_a == keys_b
    np.testing.assert_allclose(audio_a, audio_b, atol=2e-2)
    np.testing.assert_allclose(video_a, video_b, atol=2e-3)

    # Resume from the plan: cached and failed items are settled without opening them; a file replaced
    # since the plan (new size/mtime) is hashed again by the jobs; --retry-failed retries from the plan.
    make_video(folder / "a.mp4", duration=2.0, freq=1234)
    again = jobs()
    assert sum(j.hashed for j in again) == 2 and sum(j.extracted for j in again) == 1
    assert sum(j.skipped_failed for j in again) == 1 and sum(j.reused for j in again) == 3
    retry = jobs(**{"extract.retry_failed": "true"})
    assert sum(len(j.failed) for j in retry) == 1 and sum(j.extracted for j in retry) == 0
    assert "keys: 4 from the plan, 1 hashed in this run" in retry[0].lines()[2]
    replanned = plan(tiny_config(tmp_path / "cache", **part), folder, progress=False)  # reads only what changed
    assert (replanned.inputs, replanned.hashed) == (5, 1)
    assert [j.hashed for j in jobs()] == [0, 0]


def test_cache_status_reads_progress_while_a_job_runs(many_videos, tmp_path):
    # A real extract process that commits the first half of its list one shard at a time, then blocks on a
    # named pipe that nobody writes (planned before the pipe existed, so the job hashes the pipe itself).
    from mvbind.cli import cli
    from mvbind.stages.cache_info import cache_status
    from mvbind.stages.extract import plan

    videos = sorted(many_videos.glob("*.mp4"))
    half = len(videos) // 2
    manifest = tmp_path / "videos.csv"
    cache = tmp_path / "cache"

    def write_manifest(paths):
        with open(manifest, "w", newline="") as f:
            csv.writer(f).writerows([["path"], *([str(p)] for p in paths)])

    write_manifest(videos)
    config = tiny_config(cache)
    assert plan(config, manifest, progress=False).inputs == len(videos)
    stalled = tmp_path / "stalled.mp4"
    os.mkfifo(stalled)
    write_manifest([*videos[:half], stalled, *videos[half:]])
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "cli.py"), "extract", str(manifest), "--cache-dir", str(cache), "--arch", "tiny",
         "--weights", "random", "--workers", "0", "--batch-size", "1", "--set", "extract.shard_size=1"],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while len(committed_shards(cache)) < half and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None and len(committed_shards(cache)) == half
        time.sleep(0.3)  # the progress file is written right after each commit
        [report] = cache_status(cache)
        assert (report["planned"], report["done"], report["failed"], report["remaining"]) == (8, half, 0, 8 - half)
        [part] = report["partitions"]
        assert not part["finished"] and part["committed"] == half and part["todo"] == len(videos) + 1
        assert part["pid"] == proc.pid and report["rate"] > 0 and report["eta_seconds"] > 0
        out = CliRunner().invoke(cli, ["cache", "status", "--cache-dir", str(cache)])
        assert out.exit_code == 0 and f"done {half} (50.0 %), failed 0, remaining {8 - half}" in out.output
        assert "1 partition job(s) running" in out.output and "running, committed 4 of 9 to do" in out.output
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    [stopped] = cache_status(cache)[0]["partitions"]
    assert stopped["state"] == "stopped (rerun to resume)" and stopped["committed"] == half
    stalled.unlink()
    write_manifest(videos)
    finished = extract(config, manifest, progress=False)  # resumes from the plan, then says it finished
    assert finished.reused == half and finished.extracted == 8 - half and finished.hashed == 0
    [report] = cache_status(cache)
    assert (report["done"], report["remaining"]) == (8, 0) and report["partitions"][0]["finished"]


@pytest.mark.parametrize("workers", [0, 1])
def test_item_timeout_records_a_hung_input_as_failed_and_the_run_goes_on(videos, tmp_path, workers):
    folder = tmp_path / "v"
    shutil.copytree(videos, folder)
    os.mkfifo(folder / "hung.mp4")  # nobody writes it: reading it blocks for good (a file on a hung mount)
    config = tiny_config(tmp_path / "cache", **{"extract.item_timeout": "1.5", "extract.workers": workers})
    summary = extract(config, folder, progress=False)
    assert summary.extracted == 4
    why = "timed out after 1.5s (extract.item_timeout)"
    assert [(Path(p).name, r) for p, r in summary.failed] == [("hung.mp4", why)]
