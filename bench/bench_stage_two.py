"""Stage-two benchmark: training epochs and evaluation on cached-size inputs, against their matmul floors.

    .venv/bin/python -m bench.bench_stage_two                 # 10k and 100k (100k epoch timed on 60 steps)
    .venv/bin/python -m bench.bench_stage_two --full          # time the whole 100k epoch
    .venv/bin/python -m bench.bench_stage_two --sizes 10000 --json out.json
    .venv/bin/python -m bench.bench_stage_two --sizes 100000 --eval-dims-large 256   # the 256-d 100k eval (minutes)

Reports, for the projectors (default residual: linear 1024 -> 256 plus a 1024 -> 1024 -> 256 MLP branch;
mlp: a 1024 -> 1024 -> 1024 residual block then 1024 -> 256; linear; batch 256, mean pooling):
  - seconds per training epoch and pairs/s (stages.train.train_epoch: the loop `cli.py train` runs),
  - the same epoch's pure matrix multiplies (every GEMM of forward and backward, same shapes and
    count, nothing else): the overhead of everything else is the ratio;
  - eval: exact ranks both directions over a gallery (pipeline.metrics.retrieval_ranks) at the
    projector's 256-d (and ImageBind's 1024-d for the zero-shot baseline; 64-d by default for
    100k), in a fresh subprocess for a clean peak RSS, with the time spent in its matmuls
    (the floor: 2·n²·d flops);
  - loading and pooling a real 10k-item HDF5 cache (ImageBind shapes: audio 3x1024, video 15x1024).
Timings depend on the machine's load: the load average is printed with the results.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from bench import finish
from mvbind.pipeline.binding.loss import BindingLoss
from mvbind.pipeline.binding.projector import BindingModel, Head, ProjectorSpec, param_groups
from mvbind.pipeline.binding.training import train_epoch

ROOT = Path(__file__).resolve().parents[1]

BATCH = 256


def spec_for(projector: str) -> ProjectorSpec:
    return ProjectorSpec(audio_dim=1024, video_dim=1024, audio_clips=3, video_clips=15, projector=projector,
                         embed_dim=256, hidden_dim=1024, depth=1, dropout=0.1)


def unit_rows(n: int, d: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(n, d, generator=g), dim=1)


def matmul_plan(model: BindingModel, batch: int) -> list[tuple[int, int, int]]:
    """(m, k, n) of every GEMM in one training step's forward and backward."""
    plan = []
    for head in model.heads.values():
        assert isinstance(head, Head)
        linears = [m for m in head.modules() if isinstance(m, torch.nn.Linear)]
        for lin in linears:
            k, n = lin.in_features, lin.out_features
            plan.append((batch, k, n))  # forward
            plan.append((n, batch, k))  # grad of the weight
            # grad of the input: not for a layer that reads the (parameter-free) pooled input directly
            reads_input = lin is head.proj and not any(True for _ in head.blocks.parameters())
            if not reads_input:
                plan.append((batch, n, k))
    e = model.spec.embed_dim
    plan += [(batch, e, batch), (batch, batch, e), (batch, batch, e)]  # logits and their two grads
    return plan


def time_matmuls(plan: list[tuple[int, int, int]], steps: int) -> float:
    ops = [(torch.randn(m, k), torch.randn(k, n), torch.empty(m, n)) for m, k, n in plan]
    for a, b, c in ops:
        torch.mm(a, b, out=c)
    t = time.perf_counter()
    for _ in range(steps):
        for a, b, c in ops:
            torch.mm(a, b, out=c)
    return time.perf_counter() - t


def bench_epoch(n: int, projector: str, max_steps: int | None, repeats: int, clip_dropout: float = 0.0) -> dict:
    """Best of `repeats` (a busy shared machine only ever makes a run slower), epoch and floor interleaved.

    With `clip_dropout` the inputs are fp16 clips as cached (video 15, audio 3 per item) and every step pools
    a random subset of them (`train.clip_dropout`); the GEMM floor is the same."""
    torch.manual_seed(0)
    model = BindingModel(spec_for(projector))
    opt = torch.optim.AdamW(param_groups(model, 0.1), lr=1e-3, betas=(0.9, 0.98), eps=1e-6, fused=True)
    loss_fn = BindingLoss()
    video, audio = unit_rows(n, 1024, 1), unit_rows(n, 1024, 2)
    if clip_dropout:
        g = torch.Generator().manual_seed(3)
        video = (video[:, None] + 0.5 * torch.randn(n, 15, 1024, generator=g) / 32).half()
        audio = (20 * audio[:, None] + 10 * torch.randn(n, 3, 1024, generator=g) / 32).half()
    groups = torch.arange(n)
    steps = n // BATCH
    timed_rows = n if max_steps is None or max_steps >= steps else max_steps * BATCH
    timed_steps = timed_rows // BATCH
    gen = torch.Generator().manual_seed(0)
    warm = 4 * BATCH
    train_epoch(model, opt, loss_fn, video[:warm], audio[:warm], groups[:warm], batch_size=BATCH, generator=gen,
                lr_of_step=lambda i: 1e-3, clip_dropout=clip_dropout)
    plan = matmul_plan(model, BATCH)
    epoch_times, floor_times = [], []
    for _ in range(repeats):
        t = time.perf_counter()
        train_epoch(model, opt, loss_fn, video[:timed_rows], audio[:timed_rows], groups[:timed_rows],
                    batch_size=BATCH, generator=gen, lr_of_step=lambda i: 1e-3, clip_dropout=clip_dropout)
        epoch_times.append((time.perf_counter() - t) / timed_steps)
        floor_times.append(time_matmuls(plan, timed_steps) / timed_steps)
    step_s, mm_step_s = min(epoch_times), min(floor_times)
    flops = sum(2 * m * k * nn for m, k, nn in plan)
    return {"pairs": n, "projector": projector, "clip_dropout": clip_dropout,
            "steps": steps, "timed_steps": timed_steps, "repeats": repeats,
            "epoch_s": step_s * steps, "pairs_per_s": BATCH / step_s, "matmul_epoch_s": mm_step_s * steps,
            "overhead_ratio": step_s / mm_step_s, "gflop_per_step": flops / 1e9,
            "matmul_gflops": flops / mm_step_s / 1e9,
            "all_epoch_s": [x * steps for x in epoch_times], "all_matmul_epoch_s": [x * steps for x in floor_times]}


def _proc_status(field: str) -> int:
    """A memory figure of this process from /proc/self/status, in bytes (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def metrics_at(rev: str | None):
    """pipeline/binding/metrics.py as it is, or as it was at git revision `rev` (to time and check
    the ranks of an earlier implementation on the very same inputs). The old source is written to a
    file under the temp directory and imported from there, so numba can cache its kernels as it
    does for the current one (a second run of the same `--against` loads them instead of compiling)."""
    if rev is None:
        from mvbind.pipeline.binding import metrics
        return metrics
    import importlib.util

    source = subprocess.run(["git", "show", f"{rev}:pipeline/binding/metrics.py"], cwd=ROOT, capture_output=True,
                            text=True, check=True).stdout
    path = Path(tempfile.gettempdir()) / "mvbind-bench" / f"metrics_at_{rev}.py"
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists() or path.read_text() != source:
        path.write_text(source)
    spec = importlib.util.spec_from_file_location(f"metrics_at_{rev}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # numba's cache refers to the module by name
    spec.loader.exec_module(module)
    return module


def eval_worker(n: int, d: int, rev: str | None = None, repeats: int = 1) -> dict:
    """Runs in a fresh process: exact ranks both ways for n items at d dims."""
    import hashlib

    metrics = metrics_at(rev)
    retrieval_ranks, summarize = metrics.retrieval_ranks, metrics.summarize

    video = unit_rows(n, d, 3)
    audio = torch.nn.functional.normalize(video + 1.2 * unit_rows(n, d, 4), dim=1)
    groups = np.arange(n)
    shared = np.random.default_rng(0).choice(n, size=n // 20 // 3 * 3, replace=False)
    groups[shared] = shared.reshape(-1, 3)[:, :1].repeat(3, axis=1).reshape(-1)  # 5% of items in groups of 3
    rss_inputs = _proc_status("VmRSS")
    mm_time = [0.0]
    real_mm = torch.mm

    def timed_mm(*args, **kw):
        t = time.perf_counter()
        out = real_mm(*args, **kw)
        mm_time[0] += time.perf_counter() - t
        return out

    torch.mm = timed_mm
    timings = []  # (seconds, matmul seconds) per repeat: a busy shared machine only ever makes one slower
    for _ in range(repeats):
        mm_time[0] = 0.0
        t = time.perf_counter()
        v2m, m2v = retrieval_ranks(video, audio, groups, chunk_mb=256)
        timings.append((time.perf_counter() - t, mm_time[0]))
    seconds, mm_seconds = min(timings)
    peak = _proc_status("VmHWM")  # this process's peak RSS (ru_maxrss would include the parent's, inherited at fork)
    digest = hashlib.sha256(v2m.tobytes() + m2v.tobytes()).hexdigest()[:16]
    return {"gallery": n, "dim": d, "rev": rev or "working tree", "ranks_sha256": digest,
            "seconds": seconds, "matmul_seconds": mm_seconds, "repeats": repeats,
            "peak_rss_gb": peak / 2**30, "rss_inputs_gb": rss_inputs / 2**30,
            "R@10_v2m": summarize(v2m)["R@10"], "R@10_m2v": summarize(m2v)["R@10"]}


def bench_eval(n: int, d: int, rev: str | None = None, repeats: int = 1) -> dict:
    against = ["--against", rev] if rev else []
    out = subprocess.run([sys.executable, "-m", "bench.bench_stage_two", "--eval-worker", str(n), str(d), *against,
                          "--eval-repeats", str(repeats)], capture_output=True, text=True, check=True, cwd=ROOT)
    return json.loads(out.stdout.strip().splitlines()[-1])


def bench_cache_load(n: int) -> dict:
    from mvbind.cache import FeatureCache
    from mvbind.pipeline.binding.pairs import load_pairs
    from tests.planted import write_planted

    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        ns = write_planted(Path(tmp) / "cache", n, audio_shape=(3, 1024), video_shape=(15, 1024), shard_size=2048)
        write_s = time.perf_counter() - t
        ns = FeatureCache(Path(tmp) / "cache").find(ns.fingerprint[:8])
        t = time.perf_counter()
        pairs = load_pairs(ns)
        load_s = time.perf_counter() - t
        size = sum(p.stat().st_size for p in ns.shard_paths())
    return {"items": n, "write_s": write_s, "load_pool_s": load_s, "shard_gb": size / 2**30, "usable": len(pairs)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="10000,100000")
    ap.add_argument("--full", action="store_true", help="time whole epochs at every size (slow at 100k)")
    ap.add_argument("--steps-100k", type=int, default=60, help="steps timed per large epoch without --full")
    ap.add_argument("--repeats", type=int, default=3, help="timed repeats per epoch measurement (best is kept)")
    ap.add_argument("--eval-dims-large", default="64",
                    help="embedding sizes for galleries over 10k (256 takes minutes: 2·n²·d flops)")
    ap.add_argument("--skip-epochs", action="store_true", help="only the eval (and cache) measurements")
    ap.add_argument("--threads", type=int, default=0, help="torch threads for the epochs (0: torch's default, one "
                    "per core; train.threads defaults to 1, which also lets clip pooling run ahead on a spare core)")
    ap.add_argument("--clip-dropout", default="0.5,0", help="train.clip_dropout values of the epoch measurements "
                    "(0.5 is the default: fp16 clips pooled each step; 0: pooled inputs)")
    ap.add_argument("--skip-eval", action="store_true", help="only the epoch (and cache) measurements")
    ap.add_argument("--skip-cache", action="store_true", help="skip the HDF5 write/load measurement")
    ap.add_argument("--json", default=None, help="also write the results here")
    ap.add_argument("--against", default=None, metavar="REV",
                    help="also time the ranking as it was at this git revision, and check its ranks are identical")
    ap.add_argument("--eval-repeats", type=int, default=1, help="timed rankings per eval measurement (best is kept)")
    ap.add_argument("--eval-worker", nargs=2, type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.eval_worker:
        print(json.dumps(eval_worker(*args.eval_worker, rev=args.against, repeats=args.eval_repeats)))
        return
    sizes = [int(s) for s in args.sizes.split(",")]
    if args.threads:
        torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    info = {"cpu_threads": torch.get_num_threads(), "cores": os.cpu_count(), "torch": torch.__version__,
            "batch": BATCH}
    results = {"machine": info, "epochs": [], "eval": [], "cache": None}
    print(f"# stage-two benchmark ({os.cpu_count()}-core CPU, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; load average before {load_before[0]:.2f})\n", flush=True)
    for n in sizes if not args.skip_epochs else []:
        for projector, p in [(proj, float(p)) for proj in (("residual", "mlp", "linear") if n <= 10000 else
                                                         ("residual",)) for p in args.clip_dropout.split(",")]:
            limit = None if args.full or n <= 10000 else args.steps_100k
            r = bench_epoch(n, projector, limit, args.repeats, p)
            results["epochs"].append(r)
            note = "" if r["timed_steps"] == r["steps"] else f" (timed {r['timed_steps']} of {r['steps']} steps)"
            note += f" [best of {r['repeats']}]"
            print(f"epoch  {n:>7} pairs  {projector:6s} clip_dropout {p:g}  {r['epoch_s']:7.2f} s/epoch  "
                  f"{r['pairs_per_s']:8.0f} pairs/s  "
                  f"matmul-only {r['matmul_epoch_s']:7.2f} s  ratio {r['overhead_ratio']:.2f}x  "
                  f"({r['matmul_gflops']:.0f} GFLOP/s in GEMM){note}", flush=True)
    for n in sizes if not args.skip_eval else []:
        dims = (256, 1024) if n <= 10000 else tuple(int(x) for x in args.eval_dims_large.split(","))
        for d in dims:
            for rev in (None, args.against) if args.against else (None,):
                r = bench_eval(n, d, rev, args.eval_repeats)
                results["eval"].append(r)
                ranking = r["seconds"] - r["matmul_seconds"]
                print(f"eval   {n:>7} gallery {d:5d}-d  {r['seconds']:7.2f} s  (matmul {r['matmul_seconds']:.2f} s, "
                      f"{2 * n * n * d / max(r['matmul_seconds'], 1e-9) / 1e9:.0f} GFLOP/s; ranking +{ranking:.2f} s "
                      f"= {100 * ranking / max(r['matmul_seconds'], 1e-9):.0f} %)  peak RSS "
                      f"{r['peak_rss_gb']:.2f} GB (inputs {r['rss_inputs_gb']:.2f} GB)  [{r['rev']}, ranks "
                      f"{r['ranks_sha256']}]", flush=True)
    if not args.skip_cache:
        r = bench_cache_load(10000)
        results["cache"] = r
        print(f"cache  {r['items']:>7} items  write {r['write_s']:.1f} s  load+pool {r['load_pool_s']:.1f} s  "
              f"({r['shard_gb']:.2f} GB of shards)", flush=True)
    finish(results, load_before, args.json)


if __name__ == "__main__":
    main()
