"""Choosing stage two's defaults: a planted cache shaped like ImageBind's, then `mvbind sweep` over it.

    .venv/bin/python -m bench.bench_defaults --out /tmp/defaults \\
        --grid train.projector=mlp,linear,residual --seeds 3

writes (once) a planted namespace in OUT/cache: `--pairs` items, audio 3 clips and video 15 views
of `--dim`-d vectors stored as fp16 (norms ~20 and 1 as ImageBind's), both sides from 16 shared
latent factors through two different random nonlinear maps, plus `--nuisance` modality-only
factors and noise (tests/planted.py), split 80/10/10 by the default hash rule; then runs the
sweep (train's and eval's own code paths) and prints its table. The figures in docs/STAGE_TWO.md
come from this script; `--set` passes any other setting (e.g. --set train.epochs=30).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from mvbind.cache import FeatureCache
from mvbind.pipeline.config import load_config
from mvbind.stages.sweep import parse_grid, sweep
from tests.planted import write_planted


def planted_cache(root: Path, pairs: int, dim: int, nuisance: int, seed: int, jitter: float, noise: float) -> str:
    """The planted namespace's fingerprint, writing it first if this folder has none."""
    cache = FeatureCache(root)
    want = {"n": pairs, "nuisance": nuisance, "jitter": jitter, "noise": noise, "seed": seed}
    found = [ns for ns in cache.namespaces() if all(ns.settings.get(k) == v for k, v in want.items())
             and ns.settings["shapes"]["audio"][1] == dim] if root.exists() else []
    if found:
        return found[0].fingerprint
    t = time.perf_counter()
    ns = write_planted(root, pairs, audio_shape=(3, dim), video_shape=(15, dim), noise=noise, jitter=jitter,
                       nuisance=nuisance, seed=seed, shard_size=2048,
                       settings_extra={"nuisance": nuisance, "jitter": jitter, "noise": noise, "bench": "defaults"})
    print(f"planted cache: {pairs} pairs, {dim}-d, {nuisance} nuisance factors ({time.perf_counter() - t:.1f} s)")
    return ns.fingerprint


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True, help="work folder (cache/ and runs/ go here)")
    ap.add_argument("--pairs", type=int, default=4000)
    ap.add_argument("--dim", type=int, default=1024)
    ap.add_argument("--nuisance", type=int, default=16)
    ap.add_argument("--jitter", type=float, default=1.2, help="video latent = track latent + jitter · N(0, 1)")
    ap.add_argument("--noise", type=float, default=4.0, help="per-clip noise relative to the signal")
    ap.add_argument("--data-seed", type=int, default=0)
    ap.add_argument("--grid", action="append", default=[], help="train.KEY=V1,V2 (repeatable)")
    ap.add_argument("--set", action="append", default=[], help="section.key=value over the defaults (repeatable)")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--name", default="sweep")
    args = ap.parse_args()
    fp = planted_cache(args.out / "cache", args.pairs, args.dim, args.nuisance, args.data_seed, args.jitter,
                      args.noise)
    overrides = {"paths.cache": str(args.out / "cache"), "paths.runs": str(args.out / "runs"),
                 "train.cache": fp[:16], **dict(s.split("=", 1) for s in args.set)}
    t = time.perf_counter()
    result = sweep(load_config(None, overrides), parse_grid(args.grid), seeds=args.seeds, name=args.name)
    print(result.table)
    print(f"{len(result.trials)} trials in {time.perf_counter() - t:.0f} s; written to {result.out_dir}")


if __name__ == "__main__":
    main()
