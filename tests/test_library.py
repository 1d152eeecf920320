"""Music libraries: ragged windows in the cache, windows computed exactly like encoder clips, the
library file (format, atomic write, damage and version refusals), exact and FAISS search, and
`index` end to end on real ffmpeg-made music files with a real tiny ImageBind."""

import dataclasses
import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from mvbind.cache import FeatureCache, Row
from mvbind.cache.shards import read_windows
from mvbind.errors import ConfigError
from mvbind.pipeline.binding.pooling import mean_pool
from mvbind.pipeline.config import load_config
from mvbind.pipeline.encoders.imagebind.audio import AudioSettings, decode_audio, waveform_inputs
from mvbind.pipeline.encoders.imagebind.encoder import imagebind_windows
from mvbind.pipeline.encoders.imagebind.model import build_imagebind
from mvbind.pipeline.library.locate import library_path
from mvbind.pipeline.library.store import (
    LibraryError,
    build_faiss,
    exact_search,
    faiss_search,
    load_library,
    read_header,
    track_recall,
    write_library,
)
from mvbind.pipeline.library.windows import WindowLayout, window_settings
from mvbind.stages.index import index
from tests import synth
from tests.media import make_video, run_ffmpeg

SR = 16000
pytestmark = pytest.mark.usefixtures("one_thread")  # a tiny model: a second thread only adds hand-offs
SETTINGS = {"encoder": {"name": "test"}, "shapes": {"audio": [1, 8], "video": [1, 8]}}


def write_wav(path: Path, x: np.ndarray, sr: int = SR) -> Path:
    return synth.write_wav(path, x, sr)


def noise(seconds: float, seed: int, sr: int = SR) -> np.ndarray:
    return 0.2 * np.random.default_rng(seed).standard_normal(int(seconds * sr)).astype(np.float32)


def tone(seconds: float, freq: float, sr: int = SR) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    return (0.4 * np.sin(2 * np.pi * freq * t) * (0.6 + 0.4 * np.sin(2 * np.pi * 2.5 * t))).astype(np.float32)


def tiny_config(root: Path, **overrides):
    base = {"encoder.arch": "tiny", "encoder.weights": "random", "paths.cache": str(root / "cache"),
            "paths.runs": str(root / "runs"), "library.dir": str(root / "libs"), "extract.workers": 0,
            "encoder.batch_size": 4}
    base.update(overrides)
    return load_config(overrides=base)


# -- cache: ragged windows ------------------------------------------------------------------------
def test_ragged_windows_roundtrip_and_shards_without_them_still_read(tmp_path):
    ns = FeatureCache(tmp_path).create(SETTINGS)
    rng = np.random.default_rng(0)
    counts = [3, 0, 7, 1]
    rows = []
    for i, c in enumerate(counts):
        wins = rng.standard_normal((c, 8)).astype(np.float32) if c else None
        rows.append(Row(key=f"{i:032x}", path=f"/music/{i}.mp3", audio=rng.standard_normal((1, 8)), video=None,
                        duration=10.0 + i, windows=wins, window_starts=np.arange(c, dtype=np.float32) if c else None))
    ns.write_shard(rows)
    ns.write_shard([Row(key="f" * 32, path="/music/old.mp3", audio=np.ones((1, 8)), video=None, duration=3.0)])

    w = ns.load_windows()  # shards in name order; rows of a shard in order
    assert sorted(w.keys) == sorted([r.key for r in rows] + ["f" * 32])
    at = {k: i for i, k in enumerate(w.keys)}
    assert [w.counts[at[r.key]] for r in rows] == counts and w.counts[at["f" * 32]] == 0
    assert w.offsets[-1] == len(w.audio) == 11
    assert w.audio.dtype == np.float16 and w.starts.dtype == np.float32
    for r in rows:
        i = at[r.key]
        assert w.paths[i] == r.path and w.duration[i] == r.duration
        if r.windows is not None:
            np.testing.assert_array_equal(w.audio[w.offsets[i]:w.offsets[i + 1]], r.windows.astype(np.float16))
            np.testing.assert_array_equal(w.starts[w.offsets[i]:w.offsets[i + 1]], r.window_starts)

    sub = ns.load_windows(keys=[rows[2].key, "f" * 32, "0" * 31 + "9"])  # unknown keys are left out
    assert sorted(sub.keys) == sorted([rows[2].key, "f" * 32]) and sorted(sub.counts) == [0, 7]
    np.testing.assert_array_equal(sub.audio, rows[2].windows.astype(np.float16))

    feats = ns.load()  # the existing reader is unchanged: the mean row, masks, metadata
    assert feats.audio.shape == (5, 1, 8) and not feats.video_mask.any()
    picked = ns.select([rows[3].key, "f" * 32])
    assert sorted(picked.keys) == sorted([rows[3].key, "f" * 32]) and picked.audio.shape == (2, 1, 8)


def test_inconsistent_window_offsets_are_a_damaged_shard(tmp_path):
    ns = FeatureCache(tmp_path).create(SETTINGS)
    path = ns.write_shard([Row(key="a" * 32, path="/a.mp3", audio=np.ones((1, 8)), video=None, duration=5.0,
                               windows=np.ones((2, 8)), window_starts=np.array([0.0, 1.0]))])
    with h5py.File(path, "r+") as f:
        f["win_offsets"][1] = 5
    with pytest.raises(Exception, match="inconsistent"):
        read_windows(path)
    assert len(ns.load_windows()) == 0 and (ns.root / "quarantine" / path.name).exists()


# -- windows ---------------------------------------------------------------------------------------
def test_window_layout():
    lay = WindowLayout(length=2.0, hop=1.0, max_windows=5)
    assert list(lay.starts(1.2)) == [0.0]  # shorter than a window: one (padded, as ImageBind pads)
    assert list(lay.starts(2.0)) == [0.0]
    assert list(lay.starts(5.5)) == [0.0, 1.0, 2.0, 3.0]
    long = lay.starts(100.0)  # more than max_windows: spread evenly, first at 0, last ends at the end
    assert len(long) == 5 and long[0] == 0 and long[-1] == pytest.approx(98.0)
    assert list(WindowLayout(2.0, 0.5, 100).starts(3.0)) == [0.0, 0.5, 1.0]


def test_a_window_is_exactly_an_imagebind_clip():
    """Windows at 3, 5, 7 s of prefix(3 s) + W(6 s) + suffix equal ImageBind's three clips of W alone
    (6 s: clips at 0, 2, 4 s, no overlap), bit for bit; another source rate still matches closely."""
    w = torch.from_numpy(tone(6.0, 330.0) + noise(6.0, 1) * 0.3)[None]
    track = torch.cat([torch.from_numpy(noise(3.0, 2))[None], w, torch.from_numpy(noise(2.5, 3))[None]], dim=1)
    settings = AudioSettings()
    specs, starts, duration = imagebind_windows(track, SR, settings, WindowLayout(2.0, 1.0, 600))
    assert duration == pytest.approx(11.5) and list(starts) == [float(s) for s in range(10)]
    assert specs.shape == (10, 1, 128, 204)
    clips = waveform_inputs(w, SR, settings).melspec
    for c, start in enumerate((3, 5, 7)):
        torch.testing.assert_close(specs[start], clips[c], rtol=0, atol=0)
    assert not torch.allclose(specs[4], clips[0], atol=1e-2)


# -- the library file ------------------------------------------------------------------------------
def small_library(path: Path, n_tracks: int = 6, dim: int = 8, seed: int = 0, faiss_index=None, vectors=None,
                  offsets=None) -> Path:
    rng = np.random.default_rng(seed)
    if vectors is None:
        counts = rng.integers(1, 6, n_tracks)
        offsets = np.concatenate([[0], np.cumsum(counts)])
        vectors = rng.standard_normal((offsets[-1], dim)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    n = len(offsets) - 1
    starts = np.concatenate([np.arange(c, dtype=np.float32) for c in np.diff(offsets)])
    return write_library(path, meta={"encoder_fingerprint": "f" * 64, "projector": {"kind": "zero-shot"}},
                         keys=[f"{i:032x}" for i in range(n)], paths=[f"/music/{i}.mp3" for i in range(n)],
                         titles=["Song"] * n, artists=["Band"] * n, durations=np.full(n, 30.0), offsets=offsets,
                         starts=starts, vectors=vectors, faiss_index=faiss_index)


def test_library_file_roundtrip_and_refusals(tmp_path):
    path = small_library(tmp_path / "lib.mvlib.h5")
    lib = load_library(path, vectors=True)
    assert lib.n_tracks == 6 and lib.meta["tracks"] == 6 and lib.meta["windows"] == lib.n_windows
    assert lib.vectors.dtype == np.float32 and np.allclose(np.linalg.norm(lib.vectors, axis=1), 1, atol=1e-3)
    assert lib.label(0) == "Song — Band" and not list(tmp_path.glob(".tmp-*"))

    truncated = tmp_path / "truncated.mvlib.h5"
    data = path.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(LibraryError) as err:
        load_library(truncated)
    assert str(truncated) in str(err.value) and "truncated or damaged" in str(err.value)
    assert "\n" not in str(err.value)

    newer = tmp_path / "newer.mvlib.h5"
    shutil.copy(path, newer)
    with h5py.File(newer, "r+") as f:
        f.attrs["version"] = 3
    with pytest.raises(LibraryError, match=r"newer.mvlib.h5: library format version 3 is newer than this mvbind "
                                           r"reads \(version 2\)"):
        read_header(newer)

    other = tmp_path / "notes.h5"
    other.write_text("hello")
    with pytest.raises(LibraryError, match="not an mvbind library file"):
        load_library(other)
    empty = tmp_path / "empty.mvlib.h5"
    empty.write_bytes(b"")
    with pytest.raises(LibraryError, match="truncated or damaged"):
        load_library(empty)
    with pytest.raises(LibraryError, match="no such library file"):
        load_library(tmp_path / "missing.mvlib.h5")


# -- search ----------------------------------------------------------------------------------------
def brute_force(vectors, offsets, queries, k):
    out = []
    for q in queries:
        s = vectors @ q
        best = [(float(s[a:b].max()), t, a + int(np.argmax(s[a:b]))) for t, (a, b) in
                enumerate(zip(offsets[:-1], offsets[1:]))]
        best.sort(key=lambda x: -x[0])
        out.append(best[:k])
    return out


def test_exact_search_ranks_tracks_by_their_best_window():
    rng = np.random.default_rng(1)
    counts = rng.integers(1, 40, 300)
    offsets = np.concatenate([[0], np.cumsum(counts)])
    vectors = rng.standard_normal((offsets[-1], 16)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    queries = vectors[rng.integers(0, len(vectors), 12)] + 0.3 * rng.standard_normal((12, 16)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    want = brute_force(vectors, offsets, queries, 10)
    for q_batch, chunk_mb in ((queries, 256), (queries, 1), (queries[:1], 1)):  # chunking changes nothing
        res = exact_search(vectors, offsets, q_batch, 10, chunk_mb=chunk_mb)
        for i in range(len(q_batch)):
            assert [t for _, t, _ in want[i]] == res.tracks[i].tolist()
            assert [w for _, _, w in want[i]] == res.windows[i].tolist()
            np.testing.assert_allclose([s for s, _, _ in want[i]], res.scores[i], rtol=1e-5, atol=1e-6)
    assert exact_search(vectors, offsets, queries[:2], 1000).tracks.shape == (2, 300)  # k clamps to the tracks


def test_faiss_index_recall_is_measured_and_distinct_tracks_are_returned(tmp_path):
    rng = np.random.default_rng(2)
    n_tracks, dim = 400, 32
    counts = rng.integers(20, 80, n_tracks)
    offsets = np.concatenate([[0], np.cumsum(counts)])
    centres = rng.standard_normal((n_tracks, dim)).astype(np.float32)
    vectors = np.repeat(centres, counts, axis=0) + 0.5 * rng.standard_normal((offsets[-1], dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    index, info = build_faiss(vectors, offsets, target_recall=0.95, queries=100, seed=0)
    assert info["recall_at_10"] >= 0.95 and info["nlist"] >= 16 and 1 <= info["nprobe"] <= info["nlist"]
    assert info["tuning"][-1]["nprobe"] == info["nprobe"]

    path = small_library(tmp_path / "big.mvlib.h5", vectors=vectors, offsets=offsets, faiss_index=index)
    lib = load_library(path)  # vectors not read: FAISS search doesn't need them
    assert lib.has_faiss and lib._vectors is None
    queries = vectors[rng.integers(0, len(vectors), 50)]
    approx = lib.search(queries, 10, method="faiss", nprobe=info["nprobe"])
    assert lib._vectors is None
    exact = lib.search(queries, 10, method="exact")
    assert track_recall(exact, approx) >= 0.9
    for row in approx.tracks:  # k distinct tracks, although each track has tens of near-identical windows
        assert len(set(row.tolist())) == 10
    assert (exact.tracks[:, 0] == approx.tracks[:, 0]).mean() >= 0.95
    lib.faiss_index().nprobe = 1
    one = faiss_search(lib.faiss_index(), lib.window_track, queries[:3], 10)
    assert (one.tracks >= 0).all()


def test_library_settings_are_checked():
    with pytest.raises(ConfigError, match="library.hop"):
        load_config(overrides={"library.hop": "0"})
    with pytest.raises(ConfigError, match="recommend.search"):
        load_config(overrides={"recommend.search": "fast"})
    with pytest.raises(ConfigError, match=r"\[library\] speed: unknown setting"):
        load_config(overrides={"library.speed": "1"})


# -- index end to end ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def music(tmp_path_factory):
    d = tmp_path_factory.mktemp("music")
    write_wav(d / "planted.wav", np.concatenate([noise(3.0, 5), tone(6.0, 440.0) + noise(6.0, 6) * 0.2,
                                                 noise(2.0, 7)]))
    write_wav(d / "plain.wav", tone(5.0, 220.0))
    run_ffmpeg("-f", "lavfi", "-i", "sine=frequency=660:sample_rate=44100:duration=7", "-metadata", "title=Tone 660",
               "-metadata", "artist=The Sines", str(d / "tagged.mp3"))
    (d / "sub").mkdir()
    run_ffmpeg("-f", "lavfi", "-i", "sine=frequency=880:sample_rate=48000:duration=4", "-metadata",
               "title=Ogg Tone", "-metadata", "artist=Vorbis Band", "-c:a", "libvorbis", str(d / "sub" / "x.ogg"))
    run_ffmpeg("-f", "lavfi", "-i", "sine=frequency=550:sample_rate=22050:duration=3", str(d / "short.flac"))
    (d / "notes.txt").write_text("liner notes\n")
    (d / "broken.mp3").write_text("this is not audio\n")
    (d / "empty.wav").write_bytes(b"")
    make_video(d / "clip.mp4", duration=2.0)  # a video is not a music file here
    make_video(d / "silent.m4a", duration=2.0, audio_channels=None)  # audio extension, no audio stream
    return d


def test_index_builds_a_library_and_reindexing_extracts_nothing(music, tmp_path):
    config = tiny_config(tmp_path)
    summary = index(config, music, name="mine", progress=False, notify=lambda m: None)
    lib_path = tmp_path / "libs" / "mine.mvlib.h5"
    assert summary.library == str(lib_path) and summary.tracks == 5 and summary.extracted == 5
    skipped = {Path(p).name: reason for p, reason in summary.skipped}
    assert set(skipped) == {"notes.txt", "clip.mp4", "broken.mp3", "empty.wav", "silent.m4a"}, skipped
    assert skipped["notes.txt"].startswith("not an audio file (.txt")
    assert "empty" in skipped["empty.wav"] and skipped["silent.m4a"] == "no audio stream"
    assert "cannot open media" in skipped["broken.mp3"]
    text = "\n".join(summary.lines())
    assert "zero-shot" in text and "broken.mp3" in text and "search index: exact" in text

    lib = load_library(lib_path, vectors=True)
    by_name = {Path(p).name: i for i, p in enumerate(lib.paths)}
    assert set(by_name) == {"planted.wav", "plain.wav", "tagged.mp3", "x.ogg", "short.flac"}
    t = by_name["tagged.mp3"]
    assert (lib.titles[t], lib.artists[t]) == ("Tone 660", "The Sines") and lib.label(t) == "Tone 660 — The Sines"
    o = by_name["x.ogg"]
    assert (lib.titles[o], lib.artists[o]) == ("Ogg Tone", "Vorbis Band")  # Vorbis comments live on the stream
    counts = dict(zip(lib.paths, np.diff(lib.offsets)))
    assert counts[str(music / "planted.wav")] == 10 and counts[str(music / "short.flac")] == 2
    assert lib.durations[by_name["planted.wav"]] == pytest.approx(11.0)
    assert lib.meta["projector"]["kind"] == "zero-shot" and lib.meta["windows_layout"]["hop"] == 1.0
    assert lib.vectors.shape == (lib.n_windows, 32)
    np.testing.assert_allclose(np.linalg.norm(lib.vectors, axis=1), 1.0, atol=2e-3)

    # The cached windows are the tiny ImageBind's embeddings of those exact clips (independent path).
    ns = FeatureCache(config.cache_dir).find(summary.namespace)
    assert ns.settings["windows"]["hop"] == 1.0 and ns.settings["windows"]["length"] == 2.0
    model = build_imagebind("tiny", seed=0).eval()
    wav, rate = decode_audio(music / "planted.wav")
    one = dataclasses.replace(AudioSettings(), clips_per_video=1)
    p = by_name["planted.wav"]
    with torch.inference_mode():
        for start in (0, 3, 5, 9):
            ref = model.embed_audio(waveform_inputs(wav[:, start * rate:(start + 2) * rate], rate, one).melspec)
            got = lib.vectors[lib.offsets[p] + start]
            assert lib.starts[lib.offsets[p] + start] == start
            np.testing.assert_allclose(got, mean_pool(ref.numpy()[None])[0], atol=3e-3)

    # Re-index: every track comes from the cache; the library is rebuilt identically.
    again = index(config, music, name="mine", overwrite=True, progress=False, notify=lambda m: None)
    assert (again.extracted, again.reused, again.tracks) == (0, 5, 5)
    np.testing.assert_array_equal(load_library(lib_path, vectors=True).vectors, lib.vectors)
    with pytest.raises(LibraryError, match="already exists; pass --overwrite"):
        index(config, music, name="mine", progress=False)

    # The window layout is part of the track namespace's fingerprint; the video namespace is another.
    hop = tiny_config(tmp_path, **{"library.hop": "0.5"})
    assert window_settings(hop)["windows"]["video_namespace"] == window_settings(config)["windows"]["video_namespace"]
    other = index(hop, music, name="half", progress=False, notify=lambda m: None)
    assert other.namespace != summary.namespace and other.extracted == 5 and other.windows > summary.windows
    assert json.loads((ns.root / "settings.json").read_text())["settings"]["windows"]["hop"] == 1.0


def test_index_builds_faiss_when_asked_and_prints_its_recall(music, tmp_path):
    config = tiny_config(tmp_path, **{"library.faiss_queries": "20"})
    summary = index(config, music, name="f", index_kind="faiss", progress=False, notify=lambda m: None)
    assert summary.faiss is not None and 0 <= summary.faiss["recall_at_10"] <= 1
    assert any(line.startswith("search index: FAISS IVF") and "recall@5" in line for line in summary.lines())
    lib = load_library(summary.library)
    assert lib.has_faiss
    res = lib.search(lib.vectors[:2], 3, method="faiss")
    assert res.tracks.shape == (2, 3)


def test_index_refuses_a_folder_without_music(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.txt").write_text("x")
    with pytest.raises(LibraryError, match="no music files to index"):
        index(tiny_config(tmp_path), tmp_path / "docs", progress=False)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x.mp3").write_text("nope")
    with pytest.raises(LibraryError, match="none of its 1 music file"):
        index(tiny_config(tmp_path), bad, progress=False, notify=lambda m: None)


@pytest.mark.parametrize("name", ["../../etc/x", "/tmp/x", "a/b", "..", ".hidden", "x.mvlib.h5", ""])
def test_a_library_name_never_escapes_its_folder(tmp_path, name):
    # `index --name NAME` writes <library.dir>/NAME.mvlib.h5 and nothing else; a path needs --out.
    config = load_config(overrides={"library.dir": str(tmp_path / "libs")})
    with pytest.raises(LibraryError, match=r"^--name .*: a library name is a plain name") as err:
        library_path(config, None, name, tmp_path / "music")
    assert "\n" not in str(err.value) and not list(tmp_path.rglob("*.mvlib.h5"))
    assert library_path(config, None, "my-lib_2", tmp_path) == tmp_path / "libs" / "my-lib_2.mvlib.h5"
    assert library_path(config, tmp_path / "any" / "where.h5", None, tmp_path) == tmp_path / "any" / "where.h5"
