"""Benchmark the plan step: how often each input file is read, N partition jobs without and with a plan.

Runs N partition jobs (`--num-shards N --shard-index i`, one after another, in this process, decoding
in the main process so every read is counted) over the same collection, twice: each job hashing
every input itself, and all jobs taking their keys from a plan written once by `extract --plan-only`.
Counts: files read to hash them (the runner's `hashed` and the plan's inputs) and the bytes this
process read (`/proc/self/io` rchar, which also covers decoding and HDF5), per input file.

    .venv/bin/python -m bench.bench_plan                      # 16 videos, N = 4
    .venv/bin/python -m bench.bench_plan --videos 32 --partitions 8

Figures are printed; nothing here is asserted.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path


def rchar() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    return 0


def run_jobs(folder: Path, cache: Path, partitions: int, with_plan: bool) -> dict:
    from mvbind.pipeline.config import load_config
    from mvbind.stages.extract import extract, plan

    def config(i: int = 0):
        return load_config(overrides={"encoder.arch": "tiny", "encoder.weights": "random", "paths.cache": str(cache),
                                      "extract.workers": 0, "extract.num_shards": partitions,
                                      "extract.shard_index": i})

    read0, t0 = rchar(), time.perf_counter()
    hashed = plan(config(), folder, progress=False).hashed if with_plan else 0
    extracted = 0
    for i in range(partitions):
        s = extract(config(i), folder, progress=False)
        hashed += s.hashed
        extracted += s.extracted
    return {"hashed": hashed, "bytes": rchar() - read0, "extracted": extracted, "seconds": time.perf_counter() - t0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--videos", type=int, default=16)
    ap.add_argument("--partitions", type=int, default=4)
    args = ap.parse_args()
    import torch

    from tests.synth import make_video

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "videos"
        folder.mkdir()
        for i in range(args.videos):
            make_video(folder / f"v{i:03d}.mp4", duration=2.0 + 0.1 * i, size=(160, 96), freq=200 + 13 * i)
        total = sum(p.stat().st_size for p in folder.iterdir())
        print(f"{args.videos} videos, {total / 1e6:.2f} MB, N = {args.partitions} partition jobs (tiny ImageBind, "
              "decoding in-process)")
        for name, with_plan in (("without a plan", False), ("with a plan", True)):
            r = run_jobs(folder, Path(tmp) / name.replace(" ", "-"), args.partitions, with_plan)
            print(f"{name:>15}: files read to hash {r['hashed'] / args.videos:.2f}× per input; bytes read "
                  f"{r['bytes'] / total:.2f}× the collection; extracted {r['extracted']}; {r['seconds']:.1f}s")


if __name__ == "__main__":
    main()
