"""The whole offline demo path on a tiny collection: demo-data → extract → train → eval → index → recommend."""

import contextlib
import io
import json
import re
import shlex
import subprocess
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from mvbind.pipeline.config import load_config
from mvbind.pipeline.library.recommender import Recommender
from mvbind.stages.demo import run_demo
from mvbind.stages.serve import make_app

# 20 videos of 2-2.5 s and tracks of 4-5 s: small, and still a real split to work with (seed 3: train 11, val 6,
# test 3 videos, so two held-out videos to recommend for; the split hashes the files' bytes, so a change to the
# generator can move it). Generating and extracting are most of the test's time; the second run must do neither.
TINY = dict(videos=20, library_tracks=1, seed=3, workers=1, held_out=2, k=3, video_seconds=(2.0, 2.5),
            track_seconds=(4.0, 5.0), batch_size=8, progress=False)


def stamps(folder: Path) -> dict[str, tuple[int, int]]:
    """Size and modification time of every file under folder: a file written again shows up here."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def check_attribute_headline(result, text: str, workdir: Path) -> None:
    """The attribute table covers every held-out test video, and one video's count is recomputed here from
    demo.json and a fresh recommendation (tracks named by their files, m0003.mp3 → m0003)."""
    report = result.attributes
    test_keys = json.loads((result.run_dir / "split.json").read_text())["test"]
    assert report.videos == len(test_keys) > len(result.held_out)  # all held-out videos, not the few shown
    assert "| measure | top-5 mean | chance |" in text and f"mean over {report.videos} held-out videos" in text
    headline = text[text.index("Headline:"):]
    assert "all attributes match (precision@5" in headline and "its own track in the top 5" in headline
    assert "== recommend for held-out test videos ==" not in headline  # the table is the ending, after the examples
    saved = json.loads((result.eval_dir / "attributes.json").read_text())
    assert saved["videos"] == report.videos and (result.eval_dir / "attributes.md").read_text().endswith(
        report.table())

    truth = json.loads((workdir / "data" / "demo.json").read_text())
    tracks = {t["music_id"]: t for t in truth["tracks"]}
    n = len(tracks)
    for measure in ("match", "tempo", "mode", "instrument", "own"):
        values = [v["counts"][measure] for v in report.per_video]
        assert report.mean[measure] == sum(values) / report.videos
        assert 0 <= report.chance[measure] <= 5
        assert f"| {report.mean[measure]:.2f} | {report.chance[measure]:.2f} |" in text
    assert report.chance["own"] == 5 / n  # one track of n, five drawn
    # The README shows the real demo's table: the same header and row labels as this one prints.
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    header, rule, *rows = report.table().splitlines()[:7]
    assert f"\n{header}\n{rule}\n" in readme
    for row in rows:
        assert "\n" + row.rsplit(" | ", 2)[0] + " | " in readme, row

    first = report.per_video[0]
    own = tracks[next(v["music_id"] for v in truth["videos"] if str(workdir / "data" / v["path"]) == first["video"])]
    rec = Recommender(load_config(workdir / "pipeline.toml"), library="demo", run="demo")
    top = [tracks[Path(r["track"]).stem] for r in rec.recommend([first["video"]], k=5).recommendations[0].results]

    def match(t: dict) -> bool:
        return abs(t["tempo"] - own["tempo"]) <= 0.05 * own["tempo"] and (t["mode"], t["instrument"]) == (
            own["mode"], own["instrument"])

    assert len(top) == 5 and first["counts"]["match"] == sum(map(match, top))
    assert first["counts"]["own"] == int(own["music_id"] in [t["music_id"] for t in top])
    assert first["chance"]["match"] == pytest.approx(5 * sum(map(match, tracks.values())) / n)  # its own included


def test_demo_runs_end_to_end_on_a_tiny_collection(tmp_path, one_thread):
    lines = []
    result = run_demo(tmp_path / "demo", notify=lines.append, **TINY)
    text = "\n".join(lines)
    assert (result.run_dir / "best.pt").exists() and (result.eval_dir / "recall_at_k.png").exists()
    assert result.library.exists()
    metrics = json.loads((result.eval_dir / "metrics.json").read_text())
    methods = {row["name"] for row in metrics["rows"]}
    assert {"demo", "chance"} <= methods
    assert "| demo | video→music |" in text and "| chance |" in text
    assert len(result.held_out) == 2 and all(c["video"] for c in result.held_out)
    assert "music is generated" in text
    assert "inputs 20: extracted 20, reused from cache 0" in text
    check_attribute_headline(result, text, tmp_path / "demo")

    # It ends with the command that opens the web page on its run and library; those settings serve.
    command = lines[-1].strip()
    settings = tmp_path / "demo" / "pipeline.toml"
    program, rest = command.split(" serve ", 1)
    assert rest == f"--config {settings} --run demo --library demo", lines[-3:]
    ran = subprocess.run([*shlex.split(program), "serve", "--help"], capture_output=True, text=True, timeout=120)
    assert ran.returncode == 0 and "--allow-remote" in ran.stdout, (program, ran.stderr[-500:])  # runs as printed
    with TestClient(make_app(load_config(settings), run="demo", library="demo", progress=False)) as client:
        tracks = len(list((tmp_path / "demo" / "data" / "library").glob("*.mp3")))
        assert client.get("/api/health").json()["library"]["tracks"] == tracks
        video = Path(result.held_out[0]["video"])
        answer = client.post("/api/recommend", content=video.read_bytes(), params={"name": video.name, "k": 2})
        assert answer.status_code == 200 and len(answer.json()["results"]) == 2, answer.text

    # A second run reuses the collection and the cache: nothing is generated or extracted again.
    data, cache = tmp_path / "demo" / "data", tmp_path / "demo" / "cache"
    media_before = stamps(data)
    shards_before = sorted(str(p.relative_to(cache)) for p in cache.glob("*/shards/*"))
    assert len(media_before) > 20 and len({s.split("/")[0] for s in shards_before}) == 2  # videos', tracks'
    again = []
    run_demo(tmp_path / "demo", notify=again.append, **TINY)
    again = "\n".join(again)
    assert "reusing the demo collection" in again and "extracted 0, reused from cache 20" in again
    assert "== demo-data ==" not in again and "== demo-data ==" in text
    assert stamps(data) == media_before  # no video, track, manifest or demo.json written again
    assert sorted(str(p.relative_to(cache)) for p in cache.glob("*/shards/*")) == shards_before  # nor a shard

    # The README's notebook example runs as printed, against this demo (relative paths: from its parent).
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = re.search(r"<!-- notebook-example[^>]*-->\s*```python\n(.*?)```", readme, re.S)
    assert block, "README lost its notebook example"
    code = block.group(1)
    assert len(code.strip().splitlines()) <= 6
    out = io.StringIO()
    with contextlib.chdir(tmp_path), contextlib.redirect_stdout(out):
        exec(compile(code, "README.md", "exec"), {})
    table = out.getvalue()
    assert "v0001.mp4" in table and "rank" in table and len(table.splitlines()) >= 6
    assert sorted(str(p.relative_to(cache)) for p in cache.glob("*/shards/*")) == shards_before  # cached: no write
