"""Benchmark: recommend latency over music libraries, exact and FAISS, and library build throughput.

    .venv/bin/python -m bench.bench_recommend                      # 10 000 and 1 000 000 windows
    .venv/bin/python -m bench.bench_recommend --sizes 10000 --quick

1. Search: libraries of synthetic, clustered window vectors (dim 256 = train.embed_dim): genres
   -> tracks -> sections -> windows, each level a perturbation of the one above, L2-normalised,
   30-240 windows per track (a 4-minute track at hop 1 s has 239). Per size: exact search and
   FAISS (built and tuned exactly as `cli.py index` does: pipeline.library.build_faiss), latency of
   one query at a time (one already-embedded video), and FAISS track recall@10 against exact on
   held-out video-like queries (not the build's probe queries).
2. End to end: `stages.recommend.recommend()` for one already-cached video (tiny random ImageBind)
   through a real, barely trained run's default-size heads (256-d) over library files of the same
   synthetic vectors stamped with that run's identity: per query with the library and run loaded
   once (a service), and per call as the CLI does it (reads the library file, loads the run).
3. Build: `stages.index.index()` on generated 30 s tracks with the tiny random ImageBind (zero-shot,
   then the run's heads), first and re-index (extracts nothing); the signal encoder's windows
   through stage one; projecting 100 000 ImageBind-huge-sized (1024-d) windows through a default head.

Prints a table; figures are for the machine it runs on.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from mvbind.pipeline.library.store import build_faiss, exact_search, faiss_search, track_recall
from tests.synth import write_wav

ROOT = Path(__file__).resolve().parents[1]


def synthetic_library(n_windows: int, dim: int, seed: int = 0, structure: str = "clustered"
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Clustered unit vectors (genre -> track -> section -> window) and track offsets; with
    structure="random", independent random unit vectors (no clusters: IVF's worst case)."""
    rng = np.random.default_rng(seed)
    counts = []
    total = 0
    while total < n_windows:
        c = int(min(rng.integers(30, 241), n_windows - total))
        counts.append(c)
        total += c
    n_tracks = len(counts)
    genres = rng.standard_normal((max(8, n_tracks // 50), dim)).astype(np.float32)
    track_vec = genres[rng.integers(0, len(genres), n_tracks)] + 0.8 * rng.standard_normal((n_tracks, dim)).astype(
        np.float32)
    out = np.empty((n_windows, dim), np.float32)
    offsets = np.zeros(n_tracks + 1, np.int64)
    np.cumsum(counts, out=offsets[1:])
    block = 200_000
    t = 0
    while t < n_tracks:  # in blocks of tracks, to bound temporaries
        t_end = int(np.searchsorted(offsets, offsets[t] + block, side="right")) - 1
        t_end = max(t_end, t + 1)
        for tr in range(t, t_end):
            c = counts[tr]
            n_sec = max(1, c // 40)
            sections = 0.6 * rng.standard_normal((n_sec, dim)).astype(np.float32)
            sec_of = np.minimum(np.arange(c) * n_sec // c, n_sec - 1)
            noise = rng.standard_normal((c, dim)).astype(np.float32)
            noise = 0.5 * (noise + np.roll(noise, 1, axis=0)) * 0.5  # neighbouring windows overlap
            out[offsets[tr]:offsets[tr + 1]] = track_vec[tr] + sections[sec_of] + noise
        t = t_end
    if structure == "random":
        for a in range(0, n_windows, block):
            out[a:a + block] = rng.standard_normal((min(block, n_windows - a), dim), dtype=np.float32)
    out /= np.linalg.norm(out, axis=1, keepdims=True)
    return out, offsets


def video_queries(vectors: np.ndarray, offsets: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Held-out queries shaped like a video's vector: near one track's section, far from exact."""
    rng = np.random.default_rng(seed)
    dim = vectors.shape[1]
    tracks = rng.integers(0, len(offsets) - 1, n)
    q = np.empty((n, dim), np.float32)
    for i, tr in enumerate(tracks):
        lo, hi = offsets[tr], offsets[tr + 1]
        w = vectors[rng.integers(lo, hi, 3)].mean(axis=0)
        q[i] = w + 1.5 * rng.standard_normal(dim).astype(np.float32) / np.sqrt(dim)
    return q / np.linalg.norm(q, axis=1, keepdims=True)


def timed(fn, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t) * 1000)
    return out


def ms(xs: list[float]) -> str:
    xs = sorted(xs)
    return f"{statistics.median(xs):8.2f} ms (p95 {xs[int(0.95 * (len(xs) - 1))]:.2f})"


def bench_search(sizes: list[int], dim: int, n_queries: int, k: int, target: float,
                 structure: str = "clustered") -> list[dict]:
    rows = []
    for n in sizes:
        t = time.perf_counter()
        vectors, offsets = synthetic_library(n, dim, structure=structure)
        gen = time.perf_counter() - t
        window_track = np.repeat(np.arange(len(offsets) - 1), np.diff(offsets))
        queries = video_queries(vectors, offsets, n_queries, seed=7)
        print(f"\n{n:,} windows, {len(offsets) - 1:,} tracks, dim {dim}, {structure} (generated in {gen:.1f}s)",
              flush=True)
        exact_all = exact_search(vectors, offsets, queries, k)
        reps = min(n_queries, 50 if n <= 100_000 else 12)
        lat_exact = [timed(lambda q=q, v=vectors, o=offsets: exact_search(v, o, q[None], k), 1)[0]
                     for q in queries[:reps]]
        print(f"  exact  one query: {ms(lat_exact)}", flush=True)
        t = time.perf_counter()
        index, info = build_faiss(vectors, offsets, target_recall=target, queries=200, seed=0)
        build = time.perf_counter() - t
        print(f"  faiss  {info['kind']}: built + tuned in {build:.1f}s (train/add {info['build_seconds']:.1f}s), "
              f"nprobe {info['nprobe']} (probe recall@10 {info['recall_at_10']:.3f})", flush=True)
        approx = faiss_search(index, window_track, queries, k)
        recall = track_recall(exact_all, approx)
        lat_faiss = [timed(lambda q=q, ix=index, wt=window_track: faiss_search(ix, wt, q[None], k), 1)[0]
                     for q in queries]
        print(f"  faiss  one query: {ms(lat_faiss)}; recall@{k} vs exact on {len(queries)} held-out queries "
              f"{recall:.3f}", flush=True)
        rows.append({"windows": n, "tracks": len(offsets) - 1, "dim": dim, "data": structure,
                     "exact_ms": statistics.median(lat_exact),
                     "faiss_ms": statistics.median(lat_faiss), "faiss_recall_at_10": recall,
                     "faiss_kind": info["kind"], "nprobe": info["nprobe"], "faiss_build_s": build,
                     "faiss_build_info": {k_: v for k_, v in info.items() if k_ != "tuning"}})
        del vectors, index
    return rows


def make_tracks(folder: Path, n: int, seconds: float, sr: int = 22050) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(3)
    for i in range(n):
        t = np.arange(int(seconds * sr)) / sr
        f0 = 110 * 2 ** (rng.integers(0, 24) / 12)
        beat = (np.sin(2 * np.pi * rng.uniform(1.5, 3) * t) > 0.6).astype(np.float32)
        x = (0.3 * np.sin(2 * np.pi * f0 * t) + 0.2 * np.sin(2 * np.pi * 1.5 * f0 * t)
             + 0.15 * beat * rng.standard_normal(len(t)))
        write_wav(folder / f"track{i:03d}.wav", x.astype(np.float32), sr)


def tiny_run(tmp: Path):
    """A real (barely trained) run on a few tiny-ImageBind videos with the default [train] head
    (residual MLP, hidden 1024, 256-d out), so end-to-end queries go through a real video head."""
    from mvbind.pipeline.config import load_config
    from mvbind.stages.extract import extract
    from mvbind.stages.train import train
    from tests.synth import make_video

    config = load_config(overrides={
        "encoder.arch": "tiny", "encoder.weights": "random", "paths.cache": str(tmp / "cache"),
        "paths.runs": str(tmp / "runs"), "extract.workers": 0, "library.dir": str(tmp / "libs"),
        "train.batch_size": 4, "train.epochs": 1, "train.val_fraction": 0.25, "train.test_fraction": 0.0,
        "train.audio_dup_groups": "false"})
    sources = ["testsrc", "testsrc2", "smptebars", "rgbtestsrc", "yuvtestsrc", "pal75bars", "gradients", "zoneplate"]
    for i, src in enumerate(sources):
        make_video(tmp / "videos" / f"v{i}.mp4", duration=2.0, freq=200 + 90 * i, source=src, fps=10)
    extract(config, tmp / "videos", progress=False)
    train(config, name="bench", progress=False, notify=lambda m: None)
    return config, tmp / "videos" / "v0.mp4"


def bench_end_to_end(tmp: Path, sizes: list[int]) -> list[dict]:
    """recommend() for one cached video over library files of synthetic vectors stamped with a real
    run's identity: per query with the library and run loaded once (a service), and per call as the
    CLI runs it (library file read, checkpoint loaded)."""
    from mvbind.cache import fingerprint
    from mvbind.pipeline.encoders.base import extractor_settings
    from mvbind.pipeline.library.projector import load_projector
    from mvbind.pipeline.library.store import load_library, write_library
    from mvbind.stages.recommend import recommend

    config, video = tiny_run(tmp)
    settings = extractor_settings(config)
    proj = load_projector(config, "bench", settings)
    rows = []
    for n in sizes:
        vectors, offsets = synthetic_library(n, proj.dim, seed=1)
        use_faiss = n > config.library.faiss_threshold
        t = time.perf_counter()
        index, info = build_faiss(vectors, offsets) if use_faiss else (None, None)
        faiss_s = time.perf_counter() - t
        t_tracks = len(offsets) - 1
        meta = {"encoder_fingerprint": fingerprint(settings), "projector": proj.identity, "windows_layout": {},
                "faiss": info, "encoder_description": "imagebind tiny"}
        path = tmp / "libs" / f"bench{n}.mvlib.h5"
        t = time.perf_counter()
        write_library(path, meta=meta, keys=[f"{i:032x}" for i in range(t_tracks)],
                      paths=[f"/music/{i}.mp3" for i in range(t_tracks)], titles=[""] * t_tracks,
                      artists=[""] * t_tracks, durations=np.full(t_tracks, 120.0), offsets=offsets,
                      starts=np.zeros(n, np.float32), vectors=vectors, faiss_index=index)
        write_s = time.perf_counter() - t
        size_mb = path.stat().st_size / 2**20
        t = time.perf_counter()
        lib = load_library(path)
        _ = lib.faiss_index() if use_faiss else lib.vectors
        load_s = time.perf_counter() - t
        quiet = dict(progress=False, notify=lambda m: None)
        recommend(config, [video], library=lib, projector=proj, k=10, **quiet)  # warm
        served, parts = [], []
        for _ in range(20):
            t = time.perf_counter()
            rep = recommend(config, [video], library=lib, projector=proj, k=10, **quiet)
            served.append((time.perf_counter() - t) * 1000)
            parts.append(rep.seconds)
        cli_calls = []
        for _ in range(3):
            t = time.perf_counter()
            recommend(config, [video], library=path, run="bench", k=10, **quiet)
            cli_calls.append((time.perf_counter() - t) * 1000)
        med = {k_: statistics.median(p[k_] for p in parts) * 1000 for k_ in ("embed", "project", "search")}
        print(f"  {n:>9,} windows, {rep.search}: recommend() per query {statistics.median(served):.1f} ms "
              f"(cache look-up {med['embed']:.1f}, video head {med['project']:.2f}, search {med['search']:.2f}); "
              f"per CLI-style call {statistics.median(cli_calls):.0f} ms (reads the {size_mb:.0f} MB file: load "
              f"{load_s * 1000:.0f} ms); file written in {write_s:.1f}s" +
              (f", FAISS built in {faiss_s:.1f}s" if use_faiss else ""), flush=True)
        rows.append({"windows": n, "dim": proj.dim, "search": rep.search, "per_query_ms": statistics.median(served),
                     **{f"{k_}_ms": v for k_, v in med.items()}, "per_call_ms": statistics.median(cli_calls),
                     "file_mb": size_mb, "load_s": load_s, "write_s": write_s, "faiss_build_s": faiss_s})
        del lib, vectors, index
        path.unlink()
    return rows


def bench_build(tmp: Path, n_tracks: int, seconds: float) -> list[dict]:
    import torch

    from mvbind.pipeline.binding.projector import BindingModel, ProjectorSpec
    from mvbind.pipeline.config import load_config
    from mvbind.pipeline.library.projector import Projector
    from mvbind.pipeline.library.windows import WindowLayout
    from mvbind.pipeline.media.inputs import AUDIO_EXTENSIONS
    from mvbind.stages.extract import extract
    from mvbind.stages.index import index

    folder = tmp / "music"
    make_tracks(folder, n_tracks, seconds)
    rows = []
    quiet = dict(progress=False, notify=lambda m: None)
    tiny = {"encoder.arch": "tiny", "encoder.weights": "random", "paths.cache": str(tmp / "bcache"),
            "library.dir": str(tmp / "libs"), "extract.workers": 2, "paths.runs": str(tmp / "runs")}
    for label, run in (("imagebind tiny, zero-shot", None), ("imagebind tiny, run heads", "bench")):
        config = load_config(overrides=tiny)
        for attempt in ("first", "re-index"):
            t = time.perf_counter()
            summary = index(config, folder, run=run, name="b", overwrite=True, **quiet)
            dt = time.perf_counter() - t
            print(f"  index {label:27s} {attempt:8s}: {summary.tracks} tracks ({summary.windows} windows) in "
                  f"{dt:.1f}s = {summary.tracks / dt:.2f} tracks/s, {summary.windows / dt:.0f} windows/s "
                  f"(extracted {summary.extracted}, from cache {summary.reused})", flush=True)
            rows.append({"what": f"index {label}", "run": attempt, "tracks": summary.tracks,
                         "windows": summary.windows, "seconds": dt, "extracted": summary.extracted})
    # The signal encoder has no zero-shot space (audio and video features differ): its stage-one part.
    config = load_config(overrides={"encoder.name": "signal", "paths.cache": str(tmp / "bcache"),
                                    "extract.workers": 2})
    t = time.perf_counter()
    ext = extract(config, folder, require=("audio",), extensions=AUDIO_EXTENSIONS, progress=False,
                  windows=WindowLayout.from_config(config))
    dt = time.perf_counter() - t
    n_win = n_tracks * len(WindowLayout.from_config(config).starts(seconds))
    print(f"  windows through stage one, signal encoder: {ext.extracted} tracks (~{n_win} windows) in {dt:.1f}s = "
          f"{ext.extracted / dt:.2f} tracks/s (incl. librosa's JIT warm-up)", flush=True)
    rows.append({"what": "extract windows, signal", "tracks": ext.extracted, "windows": n_win, "seconds": dt})
    # Projection at scale: 100 000 ImageBind-huge-sized windows (1024-d) through a default [train] head.
    spec = ProjectorSpec(audio_dim=1024, video_dim=1024, audio_clips=3, video_clips=15)
    proj = Projector("run", {"kind": "run"}, "", BindingModel(spec).eval(), spec)
    win = np.random.default_rng(0).standard_normal((100_000, 1024)).astype(np.float16)
    t = time.perf_counter()
    proj.windows(win)
    dt = time.perf_counter() - t
    print(f"  project 100,000 1024-d windows through a default head (mlp 1024 -> 256): {dt:.1f}s = "
          f"{100_000 / dt:,.0f} windows/s (torch {torch.get_num_threads()} threads)", flush=True)
    rows.append({"what": "project windows, default head", "windows": 100_000, "seconds": dt})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 1_000_000])
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--target-recall", type=float, default=0.98, help="library.faiss_target_recall")
    ap.add_argument("--build-tracks", type=int, default=16)
    ap.add_argument("--track-seconds", type=float, default=30.0)
    ap.add_argument("--quick", action="store_true", help="skip the end-to-end and build parts")
    ap.add_argument("--data", choices=["clustered", "random"], default="clustered",
                    help="search part: clustered synthetic windows, or unclustered random ones (IVF's worst case)")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = ap.parse_args()
    import faiss
    import torch

    print(f"machine: {os.cpu_count()} cores; faiss {faiss.__version__} ({faiss.omp_get_max_threads()} threads); "
          f"torch {torch.__version__} ({torch.get_num_threads()} threads)")
    result = {"search": bench_search(args.sizes, args.dim, args.queries, 10, args.target_recall, args.data)}
    if not args.quick:
        with tempfile.TemporaryDirectory(prefix="mvbind-bench-") as d:
            tmp = Path(d)
            os.environ.setdefault("MVBIND_HOME", str(tmp / "home"))
            print("\nend to end, one already-embedded video through a real run's 256-d video head:", flush=True)
            result["end_to_end"] = bench_end_to_end(tmp, args.sizes)
            print(f"\nlibrary build ({args.build_tracks} tracks of {args.track_seconds:g} s, hop 1 s, 2 decoding "
                  "workers):", flush=True)
            result["build"] = bench_build(tmp, args.build_tracks, args.track_seconds)
    print("\n| windows | data | exact ms/query | FAISS ms/query | FAISS recall@10 | FAISS index | build s |")
    print("|---:|---|---:|---:|---:|---|---:|")
    for r in result["search"]:
        print(f"| {r['windows']:,} | {r['data']} | {r['exact_ms']:.2f} | {r['faiss_ms']:.2f} | "
              f"{r['faiss_recall_at_10']:.3f} | {r['faiss_kind']}, nprobe {r['nprobe']} | {r['faiss_build_s']:.1f} |")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, default=float))


if __name__ == "__main__":
    main()
