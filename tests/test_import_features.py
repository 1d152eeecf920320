"""`mvbind import-features`: pre-extracted features from an npz, HDF5 (or Parquet) file into a namespace
that `train`, `eval` and `cache info` use like any other. The files are made here, with planted
cross-modal structure (tests/planted.py) and audio and video of different sizes."""

import json
import shutil

import h5py
import numpy as np
import pytest

from mvbind.cache import FeatureCache
from mvbind.cli import main as cli_main
from tests.planted import planted_arrays

SMALL = ["train.hidden_dim=128", "train.embed_dim=32", "train.batch_size=64", "train.threads=1", "train.patience=3",
         "eval.chunk_mb=16"]
N = 900


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    root = tmp_path_factory.mktemp("imported")
    mp = pytest.MonkeyPatch()
    mp.setenv("MVBIND_HOME", str(root / "home"))
    yield root
    mp.undo()


def sets(root, cache, *extra):
    return [x for s in [f"paths.cache={root / cache}", f"paths.runs={root / 'runs'}", *SMALL, *extra]
            for x in ("--set", s)]


def planted(seed: int):
    data = planted_arrays(N, audio_shape=(3, 48), video_shape=(5, 32), noise=1.0, jitter=0.3, shared_fraction=0.1,
                          no_audio=7, seed=seed)
    data["ids"] = np.array([f"clip-{seed}-{i:05d}" for i in range(N)])
    return data


@pytest.fixture(scope="module")
def npz_file(home):
    d = planted(7)  # per-clip audio, pooled video: what a CLIP-frames + AST-clips export can look like
    path = home / "mgsv-like.npz"
    np.savez(path, ids=d["ids"], audio=d["audio"].astype(np.float32), video=d["video"].mean(axis=1),
             music_id=d["music_ids"].astype(str), audio_mask=d["has_audio"], notes=np.zeros(2))
    return path


@pytest.fixture(scope="module")
def h5_file(home):
    d = planted(8)
    path = home / "features.h5"
    split = np.where(np.arange(N) % 10 == 0, "test", np.where(np.arange(N) % 10 == 1, "val", "train"))
    with h5py.File(path, "w") as f:
        f["ids"] = d["ids"].astype("S")  # bytes, as many HDF5 writers store strings
        f["audio"] = d["audio"]
        f["video"] = d["video"]
        f.create_dataset("split", data=split.astype(object), dtype=h5py.string_dtype())
        f["audio_mask"] = d["has_audio"].astype(np.uint8)
    return path


def import_ok(home, path, cache, capsys, *extra) -> list[str]:
    capsys.readouterr()
    assert cli_main(["import-features", str(path), *extra, *sets(home, cache)]) == 0
    return capsys.readouterr().out.splitlines()


def train_and_eval(home, cache, prefix, name, capsys) -> dict:
    assert cli_main(["train", "--cache", prefix, "--name", name, "--quiet", "--epochs", "8", *sets(home, cache)]) == 0
    assert cli_main(["eval", name, "--name", f"{name}-eval", *sets(home, cache)]) == 0
    capsys.readouterr()
    rows = json.loads((home / "runs" / "_evals" / f"{name}-eval" / "metrics.json").read_text())["rows"]
    return {r["kind"]: r for r in rows}


def test_npz_imports_trains_and_evaluates(home, npz_file, capsys):
    out = import_ok(home, npz_file, "cache-npz", capsys)
    prefix = out[0].split()[0]
    assert f"imported {N} items" in out[0] and f"audio ({N}, 3, 48), video ({N}, 32)" in out[0]
    assert "ignored keys not in the schema: notes" in "\n".join(out)
    ns = FeatureCache(home / "cache-npz").find(prefix)
    assert ns.audio_shape == (3, 48) and ns.video_shape == (1, 32) and ns.label == "imported mgsv-like"

    assert cli_main(["cache", "info", *sets(home, "cache-npz")]) == 0
    info = capsys.readouterr().out
    assert f"imported from {npz_file}: {N} items, audio ({N}, 3, 48), video ({N}, 32)" in info
    assert "None" not in info and "audio: 3 clip(s) × 48-d" in info and "video: 1 clip(s) × 32-d" in info

    rows = train_and_eval(home, "cache-npz", prefix[:10], "from-npz", capsys)
    run = json.loads((home / "runs" / "from-npz" / "cache.json").read_text())
    assert run["fingerprint"].startswith(prefix) and run["skipped"]["no_audio"] == 7
    assert rows["run"]["video_to_music"]["R@10"] > 3 * rows["chance"]["video_to_music"]["R@10"]
    assert "zero_shot" not in rows  # 48-d audio and 32-d video are not one space


def test_hdf5_imports_with_its_own_split(home, h5_file, capsys):
    out = import_ok(home, h5_file, "cache-h5", capsys, "--name", "h5feat")
    prefix = out[0].split()[0]
    assert f"imported {N} items" in out[0] and f"video ({N}, 5, 32)" in out[0]
    rows = train_and_eval(home, "cache-h5", prefix, "from-h5", capsys)
    split = json.loads((home / "runs" / "from-h5" / "split.json").read_text())
    every_tenth_with_audio = int(planted(8)["has_audio"][::10].sum())  # the file's test items that have pairs
    assert split["rule"] == "manifest" and split["counts"]["test"] == every_tenth_with_audio
    assert rows["run"]["music_to_video"]["R@10"] > 3 * rows["chance"]["music_to_video"]["R@10"]


def test_the_same_file_again_writes_nothing(home, npz_file, capsys):
    first = import_ok(home, npz_file, "cache-again", capsys)
    ns = FeatureCache(home / "cache-again").find(first[0].split()[0])
    before = {p.name: p.stat().st_mtime_ns for p in ns.root.rglob("*")}
    settings = (ns.root / "settings.json").read_bytes()
    again = import_ok(home, npz_file, "cache-again", capsys)
    assert again[0].split()[0] == first[0].split()[0] and "already imported; nothing written" in again[0]
    copy = home / "copy" / "mgsv-like.npz"  # the same content elsewhere, the same name: the same namespace
    copy.parent.mkdir(exist_ok=True)
    shutil.copy(npz_file, copy)
    moved = import_ok(home, copy, "cache-again", capsys)
    assert "nothing written" in moved[0] and f"first imported from {npz_file}" in "\n".join(moved)
    assert {p.name: p.stat().st_mtime_ns for p in ns.root.rglob("*")} == before
    assert (ns.root / "settings.json").read_bytes() == settings
    renamed = import_ok(home, copy, "cache-again", capsys, "--name", "other")  # another name: another namespace
    assert renamed[0].split()[0] != first[0].split()[0] and f"imported {N} items" in renamed[0]


def bad_file(home, case):
    d = planted(9)
    path = home / f"bad-{case}.npz"
    arrays = {"ids": d["ids"], "audio": d["audio"], "video": d["video"]}
    if case == "missing-video":
        del arrays["video"]
    elif case == "short-audio":
        arrays["audio"] = d["audio"][:-1]
    elif case == "bad-split":
        arrays["split"] = np.array(["train"] * (N - 1) + ["holdout"])
    elif case == "object-ids":
        arrays["ids"] = d["ids"].astype(object)
    elif case == "nan":
        arrays["video"] = d["video"].astype(np.float32)
        arrays["video"][5, 2, 3] = np.nan
    elif case == "too-big":
        arrays["audio"] = d["audio"].astype(np.float32) * 1e6
    elif case == "flat-audio":
        arrays["audio"] = d["audio"][:, 0, 0]
    elif case == "duplicate-ids":
        arrays["ids"][3] = arrays["ids"][4]
    elif case == "not-features":
        path = home / "notes.npz"
        path.write_text("just text")
        return path
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize("case,expected", [
    ("missing-video", "no 'video' array (found: ids, audio)"),
    ("short-audio", f"'audio' has {N - 1} rows, 'ids' has {N}"),
    ("bad-split", f"'split' row {N - 1} (id 'clip-9-{N - 1:05d}') is 'holdout'"),
    ("object-ids", "'ids' is a Python object array"),
    ("nan", "'video' row 5 (id 'clip-9-00005') has nan or inf"),
    ("too-big", "values beyond float16's range"),
    ("flat-audio", f"'audio' has shape ({N},); expected (n, dim) pooled or (n, clips, dim)"),
    ("duplicate-ids", "'ids' repeats 'clip-9-00004'"),
    ("not-features", "not an npz, HDF5 or Parquet file"),
])
def test_a_bad_file_is_one_line(home, case, expected, capsys):
    path = bad_file(home, case)
    capsys.readouterr()
    assert cli_main(["import-features", str(path), *sets(home, f"cache-bad-{case}")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {path}: ") and expected in err[0], err
    assert FeatureCache(home / f"cache-bad-{case}").namespaces() == []  # nothing left behind


def test_parquet_needs_pyarrow_only_when_used(home, capsys):
    pa = pytest.importorskip("pyarrow", reason="Parquet import is optional (pip install pyarrow)")
    import pyarrow.parquet as pq

    d = planted(10)
    path = home / "features.parquet"
    table = pa.table({"ids": d["ids"], "audio": [a.astype(np.float32).tolist() for a in d["audio"]],
                      "video": [v.mean(axis=0).astype(np.float32).tolist() for v in d["video"]],
                      "audio_mask": d["has_audio"]})
    pq.write_table(table, path)
    out = import_ok(home, path, "cache-parquet", capsys)
    assert f"imported {N} items" in out[0] and f"audio ({N}, 3, 48), video ({N}, 32)" in out[0]
    ns = FeatureCache(home / "cache-parquet").find(out[0].split()[0])
    feats = ns.load()
    order = np.argsort(feats.ids.astype(str))
    assert np.array_equal(feats.audio[order][d["has_audio"]], d["audio"][d["has_audio"]])
