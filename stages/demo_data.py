"""`demo-data`: write a synthetic demo collection, reproducible from a seed (pipeline.demo draws it).

Layout of ``OUT`` (paths in manifests and demo.json are relative)::

    OUT/.mvbind-demo            marker: --overwrite only ever replaces a folder that has it
    OUT/videos/v0000.mp4 …      vertical H.264/AAC mp4, 15 fps, 22.05 kHz mono, 6–12 s;
                                144×256 or 180×320, some letterboxed or pillarboxed
    OUT/videos/manifest.csv     path,id,music_id,split — split is left empty on purpose, so stage
                                two's stable hash split decides (and can keep a music_id together)
    OUT/library/m0000.mp3 …     every track the videos use (full length) plus distractor tracks
                                nobody uses, 20–60 s, mp3 with ID3 title/artist/album tags
    OUT/library/manifest.csv    path,id,music_id,title,artist,duration (id = music_id)
    OUT/demo.json               written last: seed, settings, counts, every track's latent factors
                                (tempo, mode, key, instrument, energy, sections), and every video's
                                music_id, offset (seconds into the track where its music starts:
                                ground truth for recommend's suggested start), duration, border box,
                                visual style, cut times and nuisance factors

A few tracks are reused by several videos (the same segment or another segment of the track);
``library_tracks`` counts the distractors, so the library holds the used tracks + that many.
The same seed gives byte-identical files on one machine whatever the number of workers or CPUs
(single-threaded encoders); across machines the encoders' SIMD paths may change compressed bytes.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import time
from collections import Counter
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

from tqdm import tqdm

from mvbind.errors import ConfigError
from mvbind.pipeline.demo import generate as demo

MARKER = ".mvbind-demo"
FORMAT = "mvbind-demo/1"


@dataclass
class DemoSummary:
    out_dir: str
    seed: int
    videos: int
    tracks_used: int
    distractors: int
    reused_tracks: int  # tracks heard in more than one video
    letterboxed: int
    pillarboxed: int
    video_seconds: float  # total duration of the videos
    bytes: int
    seconds: float
    workers: int

    @property
    def library(self) -> int:
        return self.tracks_used + self.distractors

    def lines(self) -> list[str]:
        out = Path(self.out_dir)
        return [
            f"demo collection (seed {self.seed}) in {out}: {self.bytes / 1e6:.1f} MB in {self.seconds:.1f}s "
            f"with {self.workers} worker(s)",
            f"videos {self.videos} ({self.video_seconds / 60:.1f} min; {self.letterboxed} letterboxed, "
            f"{self.pillarboxed} pillarboxed) using {self.tracks_used} tracks, {self.reused_tracks} of them "
            f"in several videos",
            f"library {self.library} tracks ({self.tracks_used} used + {self.distractors} distractors)",
            f"next: mvbind extract {out / 'videos' / 'manifest.csv'}   "
            f"(ground truth: {out / 'demo.json'})",
        ]


def _check_out_dir(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out}: exists and is not a folder; choose another output folder")
    if not out.exists() or not any(out.iterdir()):
        return
    if not overwrite:
        raise ConfigError(f"{out}: folder exists and is not empty; pass --overwrite to replace a demo "
                          f"collection there, or choose another folder")
    if not (out / MARKER).exists():
        raise ConfigError(f"{out}: not a demo collection (no {MARKER} marker), so --overwrite will not "
                          f"delete it; choose an empty or new folder")
    for name in ("videos", "library"):
        if (out / name).is_dir():
            shutil.rmtree(out / name)
    for name in ("demo.json", MARKER):
        if (out / name).exists():
            (out / name).unlink()


def _init_worker() -> None:
    import cv2

    cv2.setNumThreads(1)


def _run_task(task: tuple) -> str:
    kind, *args = task
    if kind == "track":
        track, path = args
        demo.write_track_file(track, Path(path))
    else:
        track, video, path = args
        demo.write_video_file(track, video, Path(path))
    return str(path)


def _write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)


def demo_data(out_dir: str | Path, *, videos: int = 300, library_tracks: int = 40, seed: int = 0,
              workers: int = 2, overwrite: bool = False,
              video_seconds: tuple[float, float] = (6.0, 12.0),
              track_seconds: tuple[float, float] = (20.0, 60.0),
              progress: bool = True) -> DemoSummary:
    """Write the demo collection into `out_dir` (see the module docstring for the layout)."""
    t0 = time.perf_counter()
    if videos < 1:
        raise ConfigError(f"videos {videos}: need at least 1")
    if library_tracks < 0:
        raise ConfigError(f"library tracks {library_tracks}: need 0 or more")
    if workers < 0:
        raise ConfigError(f"workers {workers}: need 0 (in this process) or more")
    vmin, vmax = video_seconds
    tmin, tmax = track_seconds
    if not (0.4 <= vmin <= vmax and 0 < tmin <= tmax):
        raise ConfigError(f"durations: videos {video_seconds}, tracks {track_seconds}; need 0.4 <= min <= max")
    out = Path(out_dir)
    _check_out_dir(out, overwrite)
    plan = demo.plan_collection(seed, videos, library_tracks, video_seconds=video_seconds,
                                track_seconds=track_seconds)
    (out / "videos").mkdir(parents=True, exist_ok=True)
    (out / "library").mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("written by mvbind demo-data; --overwrite may replace this folder\n")

    tasks = [("track", t, str(out / "library" / f"{t.music_id}.mp3")) for t in plan.tracks]
    tasks += [("video", plan.tracks_by_id[v.music_id], v, str(out / "videos" / f"{v.id}.mp4"))
              for v in plan.videos]
    # longest first, so the pool ends together (a video costs about as much as 20 s of track)
    tasks.sort(key=lambda task: -(task[1].duration if task[0] == "track" else 20 * task[2].duration / 6))
    bar = tqdm(total=len(tasks), desc="demo-data", unit="file", disable=not progress)
    try:
        if workers <= 1:
            for task in tasks:
                _run_task(task)
                bar.update()
        else:
            pool = ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn"),
                                       initializer=_init_worker)
            try:
                pending = {pool.submit(_run_task, task) for task in tasks}
                while pending:
                    done, pending = wait(pending, return_when=FIRST_EXCEPTION)
                    for fut in done:
                        fut.result()  # re-raise a worker's error here
                        bar.update()
            finally:
                pool.shutdown(wait=True, cancel_futures=True)
    except BaseException:
        bar.close()
        raise
    bar.close()

    _write_csv(out / "videos" / "manifest.csv", ["path", "id", "music_id", "split"],
               [[f"{v.id}.mp4", v.id, v.music_id, ""] for v in plan.videos])
    used_ids = {v.music_id for v in plan.videos}
    _write_csv(out / "library" / "manifest.csv", ["path", "id", "music_id", "title", "artist", "duration"],
               [[f"{t.music_id}.mp3", t.music_id, t.music_id, t.title, t.artist, f"{t.duration:g}"]
                for t in plan.tracks])
    uses = Counter(v.music_id for v in plan.videos)
    borders = Counter(v.border for v in plan.videos)
    record = {
        "format": FORMAT,
        "seed": seed,
        "settings": {"videos": videos, "library_tracks": library_tracks,
                     "video_seconds": list(video_seconds), "track_seconds": list(track_seconds),
                     "sample_rate": demo.SAMPLE_RATE, "fps": demo.FPS},
        "counts": {"videos": videos, "tracks_used": len(used_ids), "distractors": library_tracks,
                   "library": len(plan.tracks), "reused_tracks": sum(1 for n in uses.values() if n > 1),
                   "letterboxed": borders["letterbox"], "pillarboxed": borders["pillarbox"]},
        "tracks": [demo.track_record(t, f"library/{t.music_id}.mp3") for t in plan.tracks],
        "videos": [demo.video_record(plan.tracks_by_id[v.music_id], v, f"videos/{v.id}.mp4")
                   for v in plan.videos],
    }
    tmp = out / ".demo.json.tmp"
    tmp.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, out / "demo.json")

    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    return DemoSummary(
        out_dir=str(out), seed=seed, videos=videos, tracks_used=len(used_ids), distractors=library_tracks,
        reused_tracks=record["counts"]["reused_tracks"], letterboxed=borders["letterbox"],
        pillarboxed=borders["pillarbox"], video_seconds=sum(v.duration for v in plan.videos),
        bytes=size, seconds=time.perf_counter() - t0, workers=max(1, workers),
    )
