"""`mvbind demo`: the whole job, offline, on the synthetic demo collection.

demo-data → extract (signal encoder) → train → eval (test split, beside chance) → index the
library → recommend tracks for a few held-out test videos (where their own track landed), then
the headline: for every held-out test video, how many of its top 5 tracks share its own track's
tempo, mode and instrument, beside chance (`pipeline.demo.attributes`). The visuals show only
those attributes, so that, not "is its own track in the top 5", is what a video can be asked.
Everything lives under one work folder (default ./demo).

What it proves: the pipeline runs end to end on a fresh CPU machine, and a projector trained
on the cache learns a music↔visual correspondence that generalises to videos it never saw.
What it does not: the music is generated and the visuals are made to follow it, so the numbers
say nothing about real short videos or about ImageBind; for those, run the same steps with
`encoder.name = "imagebind"` and the pretrained weights on your own collection.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from mvbind.pipeline.binding.runs import write_json
from mvbind.pipeline.config import load_config, settings_toml
from mvbind.pipeline.demo.attributes import AttributeReport, TrackAttributes, attribute_report

if TYPE_CHECKING:
    from mvbind.pipeline.library.recommender import Recommender

SETTINGS_HEADER = ("Written by `mvbind demo`: the demo's settings over the defaults. Use it with any command,\n"
                   "e.g. mvbind serve --config THIS_FILE --run demo --library demo")
CAVEAT = ("The demo's music is generated and its visuals are rendered to follow it, so these numbers show that the "
          "pipeline works and learns a real correspondence — not how well it does on real short videos.")
ATTRIBUTES_K = 5  # the headline counts the top 5 of every held-out video
ATTRIBUTES_NOTE = ("Why this measure: a video's visuals are rendered from its track's tempo, mode, instrument and "
                   "energy only, and other library tracks share those, so the picture cannot single out its own "
                   "track; a fitting recommendation shares them. All attributes = tempo within 5 % of its own "
                   "track's, the same mode and the same instrument; chance = the expected count for "
                   f"{ATTRIBUTES_K} tracks drawn uniformly from the library (its own track included: it matches "
                   "itself).")


@dataclass
class DemoResult:
    workdir: Path
    run_dir: Path
    eval_dir: Path
    library: Path
    metrics: dict
    held_out: list[dict] = field(default_factory=list)  # video, true music_id, its rank, top track, start
    seconds: dict = field(default_factory=dict)
    # The headline: per held-out test video, how many of its top 5 share its track's attributes, beside chance.
    attributes: AttributeReport | None = None


def demo_settings(workdir: Path, *, workers: int = 2, batch_size: int = 32) -> dict:
    """The demo's {"section.key": value} settings over the defaults (also written to WORKDIR/pipeline.toml)."""
    return {
        "encoder.name": "signal",
        "paths.cache": str(workdir / "cache"),
        "paths.runs": str(workdir / "runs"),
        "library.dir": str(workdir / "libraries"),
        "extract.workers": workers,
        "train.batch_size": batch_size,
        # Larger val and test galleries than the default 10 % each, so that early stopping on val R@1 means
        # something and the test table is not a handful of items.
        "train.val_fraction": 0.2,
        "train.test_fraction": 0.2,
        "train.select_metric": "r1",
        "train.patience": 20,
        "train.epochs": 150,
        "library.hop": 2.0,  # windows every 2 s: enough to place a start, half the indexing time
        # The generator's music_id is the ground truth for shared tracks; hand-crafted audio features of
        # different generated tracks can be near-identical, which would merge them into one group.
        "train.audio_dup_groups": False,
    }


def run_demo(workdir: str | Path, *, videos: int = 300, library_tracks: int = 20, seed: int = 0, workers: int = 2,
             held_out: int = 3, k: int = 5, video_seconds: tuple[float, float] = (6.0, 12.0),
             track_seconds: tuple[float, float] = (15.0, 30.0), batch_size: int = 32, progress: bool = True,
             notify: Callable[[str], None] = print) -> DemoResult:
    from mvbind.stages.demo_data import demo_data
    from mvbind.stages.evaluate import evaluate
    from mvbind.stages.extract import extract
    from mvbind.stages.index import index
    from mvbind.stages.recommend import Recommender, recommend
    from mvbind.stages.train import train

    shown = Path(workdir)
    workdir = Path(workdir).resolve()
    # A small collection (a quick try, a test) gets batches its train split (~60 %) can fill twice.
    batch_size = max(2, min(batch_size, int(0.6 * videos) // 2))
    settings = demo_settings(workdir, workers=workers, batch_size=batch_size)
    config = load_config(None, settings)
    workdir.mkdir(parents=True, exist_ok=True)
    settings_file = workdir / "pipeline.toml"  # so `serve`, `recommend` and the rest can use the demo's data
    settings_file.write_text(settings_toml(settings, header=SETTINGS_HEADER))
    seconds: dict[str, float] = {}

    def step(title: str, fn, *args, **kwargs):
        notify(f"\n== {title} ==")
        t0 = time.perf_counter()
        out = fn(*args, **kwargs)
        seconds[title] = time.perf_counter() - t0
        return out

    data = workdir / "data"
    manifest = data / "demo.json"
    wanted = {"seed": seed, "videos": videos, "library_tracks": library_tracks,
              "video_seconds": list(video_seconds), "track_seconds": list(track_seconds)}
    if _existing_demo(manifest) == wanted:
        notify(f"reusing the demo collection in {data}")
    else:
        summary = step("demo-data", demo_data, data, videos=videos, library_tracks=library_tracks, seed=seed,
                       workers=workers, overwrite=True, video_seconds=video_seconds,
                       track_seconds=track_seconds, progress=progress)
        for line in summary.lines():
            notify(line)

    summary = step("extract (signal encoder)", extract, config, data / "videos" / "manifest.csv", progress=progress)
    for line in summary.lines():
        notify(line)
    run_dir = step("train", train, config, name="demo", overwrite=True, progress=progress, notify=notify)
    eval_dir, metrics = step("eval (test split)", evaluate, config, [run_dir], name="demo", overwrite=True,
                             notify=notify)
    notify((eval_dir / "table.md").read_text())
    notify(f"plot: {eval_dir / 'recall_at_k.png'}")
    lib = step("index the library", index, config, data / "library" / "manifest.csv", run=run_dir, name="demo",
               overwrite=True, progress=progress, notify=notify)
    for line in lib.lines():
        notify(line)

    tests = _held_out_videos(run_dir, data)
    recommender = Recommender(config, library=lib.library, run=run_dir, progress=progress)  # loaded once, for both
    picks = tests[:held_out]
    report = step("recommend for held-out test videos", recommend, config, [p["path"] for p in picks],
                  library=lib.library, recommender=recommender, k=k, progress=progress, notify=notify)
    notify(report.table())
    checks = _check_against_truth(report, picks, data)
    for c in checks:
        where = f"rank {c['rank']}" if c["rank"] else f"not in the top {k}"
        notify(f"{Path(c['video']).name}: its own track {c['music_id']} is {where}"
               + (f", suggested start {c['start']:.1f} s (true segment starts at {c['offset']:.1f} s)"
                  if c["rank"] else ""))

    attributes = step(f"what the top {ATTRIBUTES_K} share with each held-out video", _attributes, recommender,
                      tests, data, ATTRIBUTES_K, notify)
    write_json(eval_dir / "attributes.json", attributes.to_json())
    (eval_dir / "attributes.md").write_text(f"# Attributes of the top {attributes.k}, test split\n\n"
                                            + attributes.table())
    notify(f"Headline: the top {attributes.k} tracks of each of the {attributes.videos} held-out test videos, "
           "scored by what the video's visuals show of its music (its track's tempo, mode and instrument):")
    notify(attributes.table())
    notify(ATTRIBUTES_NOTE)
    notify(f"table: {eval_dir / 'attributes.md'}")
    notify("")
    notify(CAVEAT)
    notify("Timing: " + ", ".join(f"{n} {s:.0f}s" for n, s in seconds.items()))
    notify("")
    notify("Drop a video on a web page and hear the tracks that fit it:")
    notify(f"  {serve_command(shown)}")
    return DemoResult(workdir, run_dir, eval_dir, Path(lib.library), metrics, checks, seconds, attributes)


def serve_command(workdir: Path) -> str:
    """The command that opens the page on the demo's run and library (paths as the user gave them), with
    the console script of this very install, so it runs as printed (e.g. `.venv/bin/mvbind` after the
    quickstart, which does not put .venv/bin on PATH)."""
    config = shlex.quote(str(Path(workdir) / "pipeline.toml"))
    return f"{_this_mvbind()} serve --config {config} --run demo --library demo"


def _this_mvbind() -> str:
    script = Path(sys.executable).with_name("mvbind")
    if not script.is_file():
        return f"{shlex.quote(sys.executable)} -m mvbind"
    on_path = shutil.which("mvbind")
    if on_path and Path(on_path).resolve() == script.resolve():
        return "mvbind"
    relative = os.path.relpath(script)
    return shlex.quote(relative if not relative.startswith("..") else str(script))


def _existing_demo(manifest: Path) -> dict | None:
    try:
        d = json.loads(manifest.read_text())
    except (OSError, ValueError):
        return None
    settings = d.get("settings", {})
    return {"seed": d.get("seed"), "videos": settings.get("videos"), "library_tracks": settings.get("library_tracks"),
            "video_seconds": settings.get("video_seconds"), "track_seconds": settings.get("track_seconds")}


def _held_out_videos(run_dir: Path, data: Path, n: int | None = None) -> list[dict]:
    """The demo videos whose cache keys are in the run's test split (the first `n`, or all), in demo.json order."""
    from mvbind.cache import content_key

    test_keys = set(json.loads((run_dir / "split.json").read_text())["test"])
    truth = json.loads((data / "demo.json").read_text())
    picks = []
    for v in truth["videos"]:
        path = data / v["path"]
        key = content_key(path)
        if key in test_keys:
            picks.append({"path": str(path), "key": key, "music_id": v["music_id"], "offset": v["offset"]})
            if len(picks) == n:
                break
    return picks


def _track_ids(data: Path) -> dict[str, str]:
    """Resolved library file path → music_id, from demo.json (recommendations name tracks by path)."""
    record = json.loads((data / "demo.json").read_text())
    return {str((data / t["path"]).resolve()): t["music_id"] for t in record["tracks"]}


def _check_against_truth(report, picks: list[dict], data: Path) -> list[dict]:
    """Where each picked video's own track landed in its recommendations (matched by content key)."""
    ids = _track_ids(data)
    by_key = {p["key"]: p for p in picks}
    checks = []
    for rec in report.recommendations:
        pick = by_key[rec.key]
        hit = next((r for r in rec.results if ids.get(str(Path(r["track"]).resolve())) == pick["music_id"]), None)
        checks.append({"video": rec.video, "music_id": pick["music_id"], "offset": pick["offset"],
                       "rank": hit["rank"] if hit else None, "start": hit["start"] if hit else None})
    return checks


def _attributes(recommender: Recommender, tests: list[dict], data: Path, k: int,
                notify: Callable[[str], None]) -> AttributeReport:
    """Recommend the top k for every held-out video (cached embeddings: cheap) and score what they share.

    Chance is taken over the tracks the recommender searches (its library file, read back to music_ids), so a
    track that failed to index is in neither; a video that could not be embedded is named by `recommend` and
    left out, so the means are over the videos that were ranked."""
    record = json.loads((data / "demo.json").read_text())
    ids = _track_ids(data)
    attrs = {t["music_id"]: TrackAttributes.from_record(t) for t in record["tracks"]}
    library = [attrs[ids[str(Path(p).resolve())]] for p in recommender.library.paths]
    report = recommender.recommend([t["path"] for t in tests], k=k, notify=notify)
    own = {t["key"]: t["music_id"] for t in tests}
    ranked = [(rec.video, own[rec.key], [ids[str(Path(r["track"]).resolve())] for r in rec.results])
              for rec in report.recommendations]
    return attribute_report(ranked, library, k)
