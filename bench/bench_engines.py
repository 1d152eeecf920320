"""Benchmark stage one's engines and where its inputs are made, on the same collection.

    .venv/bin/python -m bench.bench_engines                  # 60 videos, tiny ImageBind, 2 CPUs
    .venv/bin/python -m bench.bench_engines --videos 20 --arch small

1. engines: `extract` with `--engine local` (one process, `extract.workers` decoders) against
   `--engine ray` on a local Ray cluster of `--cpus` CPUs (one task per partition, `--cpus`
   partitions, each decoding in its own process), every run on an empty cache. Ray's wall time is
   given with the cluster's start and without it (a second run on the running cluster, new cache).
2. transforms: per video, what a decoding worker ships and how long it takes, with
   `encoder.transforms = cpu` (float32 model inputs, the reference) and `device` (uint8 tap pixels
   and 16 kHz clip waves), plus the time to finish the compact inputs on this machine's device.

Figures are printed (and a JSON line at the end); nothing here is asserted. With a CUDA device the
transforms scenario finishes the compact inputs on it.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path


def make_collection(folder: Path, count: int) -> list[Path]:
    from tests.synth import make_video

    paths = []
    for i in range(count):
        path = folder / f"v{i:03d}.mp4"
        if not path.exists():
            make_video(path, duration=4.0 + (i % 5), size=(360, 640), fps=30, audio_channels=2, sample_rate=44100,
                       freq=180 + 11 * i, source=("testsrc2", "smptebars", "testsrc")[i % 3])
        paths.append(path)
    return paths


def config_for(cache: Path, arch: str, **overrides):
    from mvbind.pipeline.config import load_config

    return load_config(overrides={"encoder.arch": arch, "encoder.weights": "random", "encoder.device": "cpu",
                                  "paths.cache": str(cache), **overrides})


def run_engines(folder: Path, work: Path, arch: str, cpus: int) -> dict:
    import ray

    from mvbind.stages.extract import extract

    out = {}
    t0 = time.perf_counter()
    s = extract(config_for(work / "local", arch, **{"extract.workers": cpus}), folder, progress=False)
    out["local"] = {"seconds": time.perf_counter() - t0, "extracted": s.extracted, "lines": s.lines()}
    t0 = time.perf_counter()
    ray.init(num_cpus=cpus, object_store_memory=200 * 2**20, include_dashboard=False, log_to_driver=False)
    start = time.perf_counter() - t0
    try:
        for name in ("ray (cold)", "ray (warm)"):
            t0 = time.perf_counter()
            s = extract(config_for(work / name.replace(" ", ""), arch, **{
                "extract.engine": "ray", "extract.num_shards": cpus, "extract.workers": 0}), folder, progress=False)
            out[name] = {"seconds": time.perf_counter() - t0, "extracted": s.extracted, "lines": s.lines()}
    finally:
        ray.shutdown()
    out["ray (cold)"]["seconds"] += start
    out["ray_start"] = start
    return out


def run_transforms(paths: list[Path]) -> dict:
    import torch

    from mvbind.pipeline.encoders.base import make_preparer, pick_device
    from mvbind.pipeline.encoders.imagebind.compact import finish

    device = pick_device("auto")
    out = {}
    for transforms in ("cpu", "device"):
        preparer = make_preparer(config_for(Path("/nonexistent"), "tiny", **{"encoder.transforms": transforms,
                                                                           "extract.workers": 1}))
        t0 = time.perf_counter()
        items = [preparer(str(p)) for p in paths]
        prep = time.perf_counter() - t0
        nbytes = [sum(x.nbytes for x in it.inputs.values()) for it in items]
        video = [it.inputs["video"].nbytes for it in items]
        t0 = time.perf_counter()
        with torch.inference_mode():
            for it in items:
                for x in it.inputs.values():
                    finish(x, device)
        if device.type == "cuda":
            torch.cuda.synchronize()
        out[transforms] = {"prepare_s_per_video": prep / len(paths), "MB_per_video": sum(nbytes) / len(paths) / 1e6,
                           "video_MB_per_video": sum(video) / len(paths) / 1e6,
                           "finish_s_per_video": (time.perf_counter() - t0) / len(paths), "device": str(device)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--videos", type=int, default=60)
    ap.add_argument("--cpus", type=int, default=2)
    ap.add_argument("--arch", default="tiny", help="tiny | small | huge (random init)")
    ap.add_argument("--media", type=Path, default=Path(tempfile.gettempdir()) / "mvbind-bench-engines")
    ap.add_argument("--skip-engines", action="store_true")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    print(f"machine: {os.cpu_count()} CPU cores, torch {torch.__version__}, load average "
          f"{os.getloadavg()[0]:.1f}; CUDA {'yes' if torch.cuda.is_available() else 'no'}")
    args.media.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    paths = make_collection(args.media, args.videos)
    folder = args.media
    print(f"{len(paths)} videos of 4-8 s at 640x360, 30 fps, stereo 44.1 kHz in {folder} "
          f"({time.perf_counter() - t0:.0f} s to make or find)")
    result: dict = {"videos": len(paths), "arch": args.arch}
    sample = paths[:12]
    result["transforms"] = run_transforms(sample)
    print(f"what a worker ships per video ({len(sample)} videos, in this process):")
    for name, r in result["transforms"].items():
        print(f"  transforms={name:<6}: prepare {r['prepare_s_per_video'] * 1e3:6.1f} ms, ships "
              f"{r['MB_per_video']:5.2f} MB (video {r['video_MB_per_video']:5.2f} MB), "
              f"finish on {r['device']} {r['finish_s_per_video'] * 1e3:6.1f} ms")
    if not args.skip_engines:
        with tempfile.TemporaryDirectory() as work:
            engines = run_engines(folder, Path(work), args.arch, args.cpus)
        local = engines["local"]["seconds"]
        print(f"engines, {args.arch} ImageBind, {args.cpus} CPUs, empty cache each:")
        for name in ("local", "ray (cold)", "ray (warm)"):
            r = engines[name]
            print(f"  {name:<11} {r['seconds']:6.1f} s  ({r['extracted']} extracted)  "
                  f"ratio to local {r['seconds'] / local:.2f}x, overhead {r['seconds'] - local:+.1f} s")
            print("      " + r["lines"][3])
        print(f"  (starting the local Ray cluster: {engines['ray_start']:.1f} s, included in 'cold')")
        result["engines"] = {k: (v if not isinstance(v, dict) else {kk: vv for kk, vv in v.items() if kk != "lines"})
                             for k, v in engines.items()}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
