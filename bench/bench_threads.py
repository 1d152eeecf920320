"""How many torch threads `mvbind train` should use: train.threads = 0 (torch's default) vs 1 vs 2.

    .venv/bin/python -m bench.bench_threads                   # both workloads, 3 interleaved rounds
    .venv/bin/python -m bench.bench_threads --busy 1          # with one CPU-bound neighbour process
    .venv/bin/python -m bench.bench_threads --rounds 5 --json out.json

Each measurement is one real `python -m mvbind train` process on a planted cache (tests/planted.py) with
the default projector (residual MLP, hidden 1024, embed 256, batch 256), so it counts what a user
waits for: the process's wall time and its CPU time (user + system, from wait4), and the training loop's
own wall time (final_metrics.json). Two workloads: the `signal` encoder's sizes (audio 3×57, video 5×22)
and ImageBind's (audio 3×1024, video 15×1024). Thread settings are interleaved round by round so a
change in the shared machine's load falls on all of them alike; the median of the rounds is reported.
`--busy N` runs N busy-looping neighbour processes during the measurements, as on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import finish

WORKLOADS = {
    "signal": {"audio_shape": (3, 57), "video_shape": (5, 22), "n": 3000, "epochs": 4},
    "imagebind": {"audio_shape": (3, 1024), "video_shape": (15, 1024), "n": 3000, "epochs": 2},
}
THREADS = (0, 1, 2)


def _spin() -> None:
    while True:
        pass


def run_train(cache: Path, runs: Path, fingerprint: str, name: str, threads: int, epochs: int) -> dict:
    """One `mvbind train` process; its wall and CPU seconds and the loop's own seconds."""
    cmd = [sys.executable, "-m", "mvbind", "train", "--cache", fingerprint[:12], "--name", name, "--quiet",
           "--epochs", str(epochs), "--set", f"paths.cache={cache}", "--set", f"paths.runs={runs}",
           "--set", f"train.threads={threads}", "--set", "train.patience=0"]
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t
    err = proc.stderr.read().decode() if proc.stderr else ""
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"train failed (threads={threads}): {err.strip().splitlines()[-1:]}")
    final = json.loads((runs / name / "final_metrics.json").read_text())
    return {"wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime, "loop_s": final["seconds"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--busy", type=int, default=0, help="busy-looping neighbour processes during the runs")
    ap.add_argument("--workloads", default=",".join(WORKLOADS))
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args()
    from tests.planted import write_planted

    load_before = os.getloadavg()
    print(f"# train.threads benchmark ({os.cpu_count()}-core CPU, load average before {load_before[0]:.2f}, "
          f"{args.busy} busy neighbour(s), median of {args.rounds} rounds)\n", flush=True)
    neighbours = [mp.Process(target=_spin, daemon=True) for _ in range(args.busy)]
    for p in neighbours:
        p.start()
    results: dict = {"cores": os.cpu_count(), "busy": args.busy, "rounds": args.rounds, "workloads": {}}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for wl in args.workloads.split(","):
                spec = WORKLOADS[wl]
                cache, runs = Path(tmp) / f"cache-{wl}", Path(tmp) / "runs"
                ns = write_planted(cache, spec["n"], audio_shape=spec["audio_shape"],
                                   video_shape=spec["video_shape"], noise=1.0, seed=0, shard_size=1024)
                samples: dict[int, list[dict]] = {t: [] for t in THREADS}
                for r in range(args.rounds):
                    for t in THREADS:
                        samples[t].append(run_train(cache, runs, ns.fingerprint, f"{wl}-t{t}-r{r}", t,
                                                    spec["epochs"]))
                rows = {}
                for t in THREADS:
                    rows[t] = {k: statistics.median(s[k] for s in samples[t]) for k in ("wall_s", "cpu_s", "loop_s")}
                    rows[t]["all"] = samples[t]
                    print(f"{wl:9s} threads={t}  wall {rows[t]['wall_s']:6.2f} s  CPU {rows[t]['cpu_s']:6.2f} s  "
                          f"training loop {rows[t]['loop_s']:6.2f} s  ({spec['n']} items, {spec['epochs']} epochs)",
                          flush=True)
                results["workloads"][wl] = {"spec": {k: list(v) if isinstance(v, tuple) else v
                                                     for k, v in spec.items()}, "threads": rows}
    finally:
        for p in neighbours:
            p.terminate()
    finish(results, load_before, args.json)


if __name__ == "__main__":
    main()
