"""Where stage one's partitions run (`extract.engine`): one interface, three engines.

- `local`: this process runs its partition (`extract.num_shards` / `shard_index`): today's runner.
- `gpus`: one process per device of this machine (`extract.devices`, default every visible GPU; `cpu,cpu`
  works without one). With D devices, this machine's partition i of N is split into the D partitions
  i, i + N, …, i + (D-1)·N of N·D (hash mod N·D keeps hash mod N), so D processes own disjoint items
  with the existing partition mechanism: locks, shard names, resume and progress files as for N·D jobs.
- `ray`: one Ray task per partition of `extract.num_shards` (all of them), each running the local runner
  on its partition; `max_retries` reruns a task whose process died (it resumes from committed shards).
  The namespace must be on a file system every node sees. See docs/ARCHITECTURE.md for why tasks and
  not Ray Data.

Each engine first writes the source's plan when there is none, so every input is hashed once in all,
not once per process. The result is one `ExtractSummary` (the processes' summaries added up).
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import time
from pathlib import Path

from mvbind.errors import MvbindError
from mvbind.pipeline.config import Config
from mvbind.pipeline.media.inputs import VIDEO_EXTENSIONS, InputItem, list_inputs
from mvbind.pipeline.runner import ExtractSummary, run_extraction, write_source_plan


def run_engine(config: Config, source: str | Path | list[InputItem], *, progress: bool = True) -> ExtractSummary:
    """Extract `source` with the engine named by extract.engine."""
    engine = config.extract.engine
    if engine == "local":
        return run_extraction(config, source, progress=progress)
    t0 = time.perf_counter()
    items = list(source) if isinstance(source, list) else list_inputs(source, VIDEO_EXTENSIONS)
    write_source_plan(config, source, progress=progress)  # every input hashed once, here
    if engine == "gpus":
        jobs = gpu_jobs(config)
        summaries = _run_processes(jobs, source)
    else:
        from mvbind.pipeline.ray_engine import run_ray

        summaries = run_ray(partition_jobs(config), source)
    merged = merge_summaries(summaries, inputs=len(items))
    merged.seconds = time.perf_counter() - t0
    return merged


def _with(config: Config, section: str, **values) -> Config:
    return dataclasses.replace(config, **{section: dataclasses.replace(getattr(config, section), **values)})


def gpu_jobs(config: Config) -> list[Config]:
    """One config per device: its device, and its share of this machine's partition (see the module doc)."""
    ext = config.extract
    if ext.devices.strip():
        devices = [d.strip() for d in ext.devices.split(",") if d.strip()]
    else:
        import torch

        devices = [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if not devices:
        raise MvbindError("setting extract.devices: no GPU is visible for engine gpus; name the devices, "
                          "e.g. --devices cuda:0,cuda:1 (or --devices cpu,cpu), or use --engine local")
    n, d = ext.num_shards, len(devices)
    return [_with(_with(config, "encoder", device=dev), "extract", engine="local", num_shards=n * d,
                  shard_index=ext.shard_index + n * j) for j, dev in enumerate(devices)]


def partition_jobs(config: Config) -> list[Config]:
    """One local config per partition of extract.num_shards (the ray engine runs them all)."""
    n = config.extract.num_shards
    return [_with(config, "extract", engine="local", shard_index=i) for i in range(n)]


def _child(config: Config, source, conn) -> None:
    try:
        conn.send(("ok", run_extraction(config, source, progress=False)))
    except BaseException as err:  # noqa: BLE001 - sent to the parent, which raises it
        conn.send(("error", f"{type(err).__name__}: {err}" if not isinstance(err, MvbindError) else str(err)))
    finally:
        conn.close()


def _run_processes(jobs: list[Config], source) -> list[ExtractSummary]:
    """Each job in its own spawned process (a fresh CUDA context per device; DataLoader workers allowed)."""
    ctx = multiprocessing.get_context("spawn")
    running = []
    for job in jobs:
        parent, child = ctx.Pipe(duplex=False)
        proc = ctx.Process(target=_child, args=(job, source, child), name=f"mvbind-{job.encoder.device}")
        proc.start()
        child.close()
        running.append((job, proc, parent))
    summaries, errors = [], []
    for job, proc, conn in running:
        try:
            status, value = conn.recv()
        except EOFError:
            status, value = "error", f"process exited with code {proc.exitcode} before reporting"
        proc.join()
        if status == "ok":
            summaries.append(value)
        else:
            errors.append(f"device {job.encoder.device} (partition {job.extract.shard_index} of "
                          f"{job.extract.num_shards}): {value}")
    if errors:
        raise MvbindError("; ".join(errors) + "; rerun the same command to resume (committed shards are kept)")
    return summaries


def merge_summaries(summaries: list[ExtractSummary], *, inputs: int) -> ExtractSummary:
    """One summary for a machine's (or a cluster's) processes: counts and times added up."""
    first = summaries[0]
    out = ExtractSummary(namespace=first.namespace, cache_dir=first.cache_dir, inputs=inputs, unit=first.unit)
    for s in summaries:
        for name in ("extracted", "reused", "duplicates", "skipped_failed", "without_audio", "decode_seconds",
                     "infer_seconds", "transfer_seconds", "write_seconds", "decode_wait_seconds",
                     "write_wait_seconds", "planned", "hashed"):
            setattr(out, name, getattr(out, name) + getattr(s, name))
        out.failed.extend(f for f in s.failed if f[0] not in {p for p, _ in out.failed})  # each process saw it
        out.shards.extend(s.shards)
        out.item_keys.update(s.item_keys)
        out.seconds = max(out.seconds, s.seconds)
        if s.model_seconds is not None:
            out.model_seconds = max(out.model_seconds or 0.0, s.model_seconds)
    # Every process saw every input: what none of them owned belongs to other machines' partitions.
    owned = out.extracted + out.reused + out.duplicates + out.skipped_failed + len({p for p, _ in out.failed})
    out.other_partition = max(0, inputs - owned)
    out.planned //= len(summaries)  # each process looked up the same plan
    return out
