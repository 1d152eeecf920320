"""Text steering: the mixing rule, a planted library where a prompt must move one track by a predictable
amount, text-only search, and the refusals (old libraries, a non-ImageBind encoder).

The library is real (the tiny random ImageBind indexes generated tracks, zero-shot), and so is the
text tower that embeds the prompt. Then its window vectors are replaced in the file by planted
unit vectors, one of which is the prompt's own embedding: the steered ranking must then equal a
float64 re-computation of the documented rule, and the planted track must rise.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from mvbind.cli import cli
from mvbind.errors import MvbindError
from mvbind.pipeline.config import load_config
from mvbind.pipeline.library.recommender import Recommender
from mvbind.pipeline.library.steer import TextEncoder, best_windows, combine, standardise
from mvbind.pipeline.library.store import LibraryError, load_library, write_library
from mvbind.stages.index import index
from tests.media import make_video
from tests.planted_library import coloured_noise, write_wav

PROMPT = "calm piano"
SR = 16000


def test_the_rule_at_its_ends_and_in_between():
    rng = np.random.default_rng(0)
    video, text = rng.normal(0.4, 0.05, 50), rng.normal(0.1, 0.2, 50)
    offsets = np.array([0, 10, 20, 30, 40, 50])
    # weight 0 ranks exactly as the video alone, weight 1 as the text alone (z is increasing affine)
    assert np.array_equal(best_windows(combine(video, text, 0.0), offsets, 5)[0], best_windows(video, offsets, 5)[0])
    assert np.array_equal(best_windows(combine(video, text, 1.0), offsets, 5)[0], best_windows(text, offsets, 5)[0])
    z = standardise(text)
    assert abs(z.mean()) < 1e-6 and abs(z.std() - 1) < 1e-5 and np.all(standardise(np.ones(4)) == 0)
    mixed = combine(video, text, 0.3)
    expect = 0.7 * (video - video.mean()) / video.std() + 0.3 * (text - text.mean()) / text.std()
    assert np.allclose(mixed, expect, atol=1e-5)
    assert np.array_equal(combine(None, text, 0.3), text.astype(np.float32))  # text alone: raw cosines
    with pytest.raises(MvbindError, match="text_weight"):
        combine(video, text, 1.5)


def base(root: Path, **extra):
    return load_config(overrides={"encoder.name": "imagebind", "encoder.arch": "tiny", "encoder.weights": "random",
                                  "paths.cache": str(root / "cache"), "paths.runs": str(root / "runs"),
                                  "library.dir": str(root / "libs"), "extract.workers": 0, **extra})


@pytest.fixture(scope="module")
def planted(tmp_path_factory, one_thread_module):
    return build_steerable(tmp_path_factory.mktemp("steer"))


def build_steerable(root: Path) -> dict:
    """A zero-shot tiny-ImageBind library "songs" of six tracks whose window 2 of track 4 is PROMPT's embedding."""
    music = root / "music"
    music.mkdir()
    for i in range(6):
        write_wav(music / f"song{i}.wav", coloured_noise(5.0, 40 + i))
    config = base(root)
    index(config, music, name="songs", progress=False, notify=lambda m: None)
    video = make_video(root / "clip.mp4", duration=2.0, source="testsrc2")
    text_vec = TextEncoder(config).embed(PROMPT)
    path = root / "libs" / "songs.mvlib.h5"
    lib = load_library(path)
    assert lib.meta["raw"] == {"space": "imagebind", "dim": 32, "stored": "vectors"}  # zero-shot: vectors are raw
    # planted windows: random unit vectors; window 2 of track 4 is the prompt's own embedding
    rng = np.random.default_rng(7)
    vectors = rng.standard_normal((lib.n_windows, 32))
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    target_track = 4
    target = int(lib.offsets[target_track]) + 2
    vectors[target] = text_vec
    with h5py.File(path, "r+") as f:
        f["windows/vectors"][...] = vectors.astype(np.float16)
    return {"root": root, "config": config, "video": video, "text": text_vec, "target": target,
            "target_track": target_track, "vectors": vectors.astype(np.float16).astype(np.float64), "path": path}


def expected(vectors: np.ndarray, offsets: np.ndarray, query: np.ndarray | None, text: np.ndarray,
             weight: float) -> tuple[list[int], np.ndarray]:
    """The documented rule in float64, from the stored (fp16) vectors: tracks best first, window scores."""
    s = vectors @ text.astype(np.float64)
    if query is None:
        c = s
    else:
        v = vectors @ query.astype(np.float64)
        c = (1 - weight) * (v - v.mean()) / v.std() + weight * (s - s.mean()) / s.std()
    best = [c[offsets[t]:offsets[t + 1]].max() for t in range(len(offsets) - 1)]
    return [int(t) for t in np.argsort(best)[::-1]], c


def test_a_prompt_pointed_at_a_window_moves_its_track_up_by_the_predicted_amount(planted):
    rec = Recommender(planted["config"], library="songs")
    embedded = rec.embed(planted["video"])
    query = rec.projector.videos(embedded.video[None])[0]
    lib = rec.library
    plain = rec.recommend([embedded], k=6, notify=lambda m: None)
    plain_order = [r["id"] for r in plain.recommendations[0].results]
    assert plain.steering is None
    for weight in (0.0, 0.3, 0.6):
        order, c = expected(planted["vectors"], lib.offsets, query, planted["text"], weight)
        report = rec.recommend([embedded], k=6, text=PROMPT, text_weight=weight, curves=True, notify=lambda m: None)
        results = report.recommendations[0].results
        assert report.steering == {"kind": "steered", "text": PROMPT, "weight": weight}
        assert [r["id"] for r in results] == order, (weight, [r["score"] for r in results])
        for r in results:  # each score is the track's best window under the rule
            lo, hi = int(lib.offsets[r["id"]]), int(lib.offsets[r["id"] + 1])
            assert abs(r["score"] - c[lo:hi].max()) < 2e-3
            assert r["start"] == pytest.approx(float(lib.starts[lo + int(np.argmax(c[lo:hi]))]))
        if weight == 0.0:
            assert order == plain_order
    # the planted track rises as the text weighs more, to the rank the rule predicts, and leads at 0.6
    ranks = []
    for weight in (0.0, 0.3, 0.6):
        ids = [r["id"] for r in rec.recommend([embedded], k=6, text=PROMPT, text_weight=weight,
                                              notify=lambda m: None).recommendations[0].results]
        ranks.append(ids.index(planted["target_track"]) + 1)
    assert ranks[0] > 1 and ranks[2] == 1 and ranks == sorted(ranks, reverse=True), ranks
    steered = rec.recommend([embedded], k=6, text=PROMPT, text_weight=0.6, notify=lambda m: None)
    top = steered.recommendations[0].results[0]
    assert top["id"] == planted["target_track"]
    assert top["start"] == pytest.approx(float(lib.starts[planted["target"]]))
    assert top["text_score"] == pytest.approx(1.0, abs=2e-3)
    assert "# steered by the text \"calm piano\" (weight 0.6)" in steered.table()


def test_text_alone_searches_by_the_prompt_and_says_so(planted):
    opts = ["--arch", "tiny", "--weights", "random", "--set", "encoder.name=imagebind", "--workers", "0", "--quiet",
            "--set", f"paths.cache={planted['root'] / 'cache'}", "--set", f"library.dir={planted['root'] / 'libs'}"]
    result = CliRunner().invoke(cli, ["recommend", "--text", PROMPT, "--library", "songs", "-k", "3", *opts])
    assert result.exit_code == 0, result.output
    assert "# text only, zero-shot (ImageBind text → music): \"calm piano\"" in result.stdout
    assert "text: calm piano: top 3" in result.stdout
    lib = load_library(planted["path"])
    order, _ = expected(planted["vectors"], lib.offsets, None, planted["text"], 1.0)
    rows = [line.split() for line in result.stdout.splitlines() if line.strip().endswith(".wav")]
    assert [row[-1] for row in rows] == [f"song{t}.wav" for t in order[:3]]
    assert rows[0][-1] == f"song{planted['target_track']}.wav" and rows[0][1] == "1.000"


def test_libraries_that_cannot_be_steered_say_why_in_one_line(planted, tmp_path):
    old = tmp_path / "old.mvlib.h5"
    old.write_bytes(planted["path"].read_bytes())
    with h5py.File(old, "r+") as f:
        f.attrs["version"] = 1
    rec = Recommender(planted["config"], library=old)
    with pytest.raises(LibraryError) as err:
        rec.recommend([planted["video"]], text=PROMPT)
    assert "can't steer it; rebuild it with `mvbind index`" in str(err.value) and "\n" not in str(err.value)
    assert rec.recommend([planted["video"]], k=2).recommendations[0].results  # still serves plain requests
    with pytest.raises(MvbindError, match="text-weight 2"):
        Recommender(planted["config"], library="songs").recommend([planted["video"]], text=PROMPT, text_weight=2)


def test_a_library_of_another_encoder_refuses_text_naming_it(tmp_path):
    rng = np.random.default_rng(0)
    common = dict(meta={}, keys=["k"], paths=["a.wav"], titles=[""], artists=[""], durations=[4.0],
                  offsets=np.array([0, 3]), starts=np.array([0.0, 1.0, 2.0]), vectors=rng.standard_normal((3, 8)))
    write_library(tmp_path / "sig.mvlib.h5", raw=rng.standard_normal((3, 57)), raw_space="signal", **common)
    problem = load_library(tmp_path / "sig.mvlib.h5").steering_problem()
    assert "built with the signal encoder; text steering needs ImageBind" in problem and "\n" not in problem
    write_library(tmp_path / "ib.mvlib.h5", raw=rng.standard_normal((3, 16)) * 20, raw_space="imagebind", **common)
    lib = load_library(tmp_path / "ib.mvlib.h5")
    assert lib.steering_problem() is None and lib.raw.shape == (3, 16)
    assert np.allclose(np.linalg.norm(lib.raw, axis=1), 1.0, atol=2e-3)  # stored L2-normalised


def test_video_only_recommendations_never_import_the_text_tower(planted):
    code = f"""
import sys
from mvbind.pipeline.library.recommender import Recommender
from tests.test_steer import base
from pathlib import Path
rec = Recommender(base(Path({str(planted['root'])!r})), library="songs")
rec.recommend([{str(planted['video'])!r}], k=2, notify=lambda m: None)
bad = [m for m in sys.modules if m.endswith(("imagebind.text", "imagebind.tokenizer")) or m in ("ftfy", "regex")]
assert rec._text is None and not bad, bad
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


def test_the_server_steers_and_searches_by_text(planted):
    from fastapi.testclient import TestClient

    from mvbind.stages.serve import make_app

    with TestClient(make_app(planted["config"], run=None, library="songs", progress=False)) as client:
        assert client.get("/api/health").json()["steering"] == {"available": True, "why_not": None,
                                                                "text_weight": 0.3}
        body = client.get("/api/search", params={"text": PROMPT, "k": 3}).json()
        assert body["video"] is None and body["steering"]["kind"] == "text only (zero-shot)"
        assert body["results"][0]["id"] == planted["target_track"]
        plain = client.post("/api/recommend", content=planted["video"].read_bytes(), params={"k": 6}).json()
        steered = client.post("/api/recommend", content=planted["video"].read_bytes(),
                              params={"k": 6, "text": PROMPT, "text_weight": 0.6}).json()
        assert plain["steering"] is None and steered["steering"] == {"kind": "steered", "text": PROMPT, "weight": 0.6}
        assert steered["results"][0]["id"] == planted["target_track"] != plain["results"][0]["id"]
        assert {"text_score", "video_score"} <= set(steered["results"][0])
