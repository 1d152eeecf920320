"""Beat-aligned starts on the demo collection: how often the start lands on the true offset.

The demo renders each video's cuts on its track's beats and records where in the track the video's
music starts (demo.json: video "offset", track "tempo"). For every held-out test video (the run's
split.json "test" keys), take its OWN track, the start the Recommender suggests for it (the start of
the track's best window for that video: k = every track, so the own track is always in the list)
and the beat-aligned start (`pipeline.library.beats.align_results`, the Recommender's own call),
and compare both with the true offset. A second pair of rows starts from the window-grid start
nearest the true offset instead (what a perfect window search would give), to show what alignment
does once the search has found the right place.

    .venv/bin/python -m bench.bench_beats                       # ./demo, made by `mvbind demo`
    .venv/bin/python -m bench.bench_beats --demo /path/to/demo

Reads the demo folder only (the feature cache is opened without writing). Figures are printed;
nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np

from mvbind.cache import content_key
from mvbind.pipeline.config import load_config
from mvbind.pipeline.library.beats import align_results
from mvbind.pipeline.library.recommender import Recommender


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--demo", default="demo", help="the folder `mvbind demo` made (data/, runs/, libraries/)")
    ap.add_argument("--run", default="demo")
    ap.add_argument("--library", default="demo")
    ap.add_argument("--split", default="test", help="which split of the run's split.json")
    ap.add_argument("--limit", type=int, default=0, help="at most this many videos (0 = all)")
    args = ap.parse_args(argv)

    demo = Path(args.demo)
    config = load_config(demo / "pipeline.toml" if (demo / "pipeline.toml").exists() else None,
                         {"recommend.beat_align": False})  # aligned below, on the own track only
    rc = config.recommend
    truth = json.loads((demo / "data" / "demo.json").read_text())
    tracks = {t["music_id"]: t for t in truth["tracks"]}
    split = json.loads((config.runs_dir / args.run / "split.json").read_text())
    wanted = set(split[args.split])
    videos = []
    for v in truth["videos"]:
        path = demo / "data" / v["path"]
        key = content_key(path)
        if key in wanted:
            videos.append((v, str(path), key))
    if args.limit:
        videos = videos[:args.limit]

    rec = Recommender(config, library=args.library, run=args.run, cache_writes=False)
    lib = rec.library
    t0 = time.perf_counter()
    rows = []
    for v, path, key in videos:
        embedded = rec.embed_key(key, path=path) or rec.embed(path)
        report = rec.recommend([embedded], k=lib.n_tracks, notify=lambda m: None)
        own_path = str(demo / "data" / tracks[v["music_id"]]["path"])
        own = next(r for r in report.recommendations[0].results
                   if Path(r["track"]).resolve() == Path(own_path).resolve())
        tr = own["id"]
        starts = lib.starts[int(lib.offsets[tr]):int(lib.offsets[tr + 1])]
        grid = dict(own, start=float(starts[np.argmin(np.abs(starts - v["offset"]))]))
        align_results([own, grid], path, search=rc.beat_search, tolerance=rc.beat_tolerance)
        rows.append({"offset": v["offset"], "beat": 60.0 / v["tempo"], "rank": own["rank"],
                     "start": own["start"], "aligned": own["aligned_start"], "score": own["alignment"],
                     "grid": grid["start"], "grid_aligned": grid["aligned_start"]})
    seconds = time.perf_counter() - t0

    print(f"# beat-aligned starts: {len(rows)} {args.split} videos of {demo}, own track each "
          f"(ranked first for {sum(r['rank'] == 1 for r in rows)}); search ±{rc.beat_search:g} s, "
          f"tolerance {rc.beat_tolerance:g} s, library hop {lib.meta.get('windows_layout', {}).get('hop', '?')} s; "
          f"{seconds:.1f} s ({seconds / max(1, len(rows)):.2f} s a video: cuts + beats + search)")
    tol = rc.beat_tolerance
    header = ("start", "n", "≤ 1 beat", "≤ ½ beat", f"≤ {tol:g} s", "in phase", "median |err| s")
    table = [header]
    for label, col in (("recommended window start", "start"), ("  beat-aligned", "aligned"),
                       ("grid start nearest the truth", "grid"), ("  beat-aligned", "grid_aligned")):
        err = np.array([r[col] - r["offset"] for r in rows])
        beat = np.array([r["beat"] for r in rows])
        phase = np.abs(err / beat - np.round(err / beat)) * beat  # distance to a whole number of beats
        table.append((label, str(len(rows)), f"{np.mean(np.abs(err) <= beat):.1%}",
                      f"{np.mean(np.abs(err) <= beat / 2):.1%}", f"{np.mean(np.abs(err) <= tol):.1%}",
                      f"{np.mean(phase <= tol):.1%}", f"{statistics.median(np.abs(err)):.3f}"))
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for n, row in enumerate(table):
        print("  ".join([row[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(row[1:], widths[1:])]))
        if n == 0:
            print("  ".join("-" * w for w in widths))
    for label, col in (("recommended", "aligned"), ("grid", "grid_aligned")):
        err = np.abs([r[col] - r["offset"] for r in rows])
        beat = np.array([r["beat"] for r in rows])
        print(f"beat-aligned from the {label} start: {np.sum(np.abs(err - beat) <= tol)} of {len(rows)} are one "
              f"beat off (±{tol:g} s), on the edge of '≤ 1 beat' either side")
    scores = [r["score"] for r in rows if r["score"] is not None]
    print(f"alignment score: median {statistics.median(scores):.2f} over {len(scores)} aligned "
          f"({len(rows) - len(scores)} without cuts or beats)")


if __name__ == "__main__":
    main()
