"""Stage one: decode media, run the frozen encoders once, commit per-clip embeddings to the cache.

Worker processes (a torch DataLoader) hash and decode files and build the encoder inputs
while the main process runs the model and commits shards, so decoding overlaps inference.
Resume is by content key: items already committed in the namespace are never decoded again.

The same runner fills a music library's track namespace (`windows=WindowLayout`, used by
`mvbind index`): each track's audio is taken in windows along it (pipeline.windows) and the
shard stores them as ragged per-item windows.
"""

from __future__ import annotations

import collections
import contextlib
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from mvbind.cache import FeatureCache, Namespace, Row, content_key, partition_of
from mvbind.cache.plan import Plan, read_plan, write_plan
from mvbind.cache.progress import ProgressFile
from mvbind.errors import open_reason
from mvbind.pipeline.config import Config
from mvbind.pipeline.encoders.base import (
    Prepared,
    backend,
    extractor_settings,
    make_embedder,
    make_preparer,
    pick_device,
)
from mvbind.pipeline.library.windows import WindowLayout, make_window_preparer, window_settings
from mvbind.pipeline.media.inputs import VIDEO_EXTENSIONS, InputItem, list_inputs
from mvbind.pipeline.writer import ShardWriter

# Outcomes of the worker step.
OK, CACHED, ELSEWHERE, FAILED, FAILED_BEFORE = "ok", "cached", "other partition", "failed", "failed before"


@dataclass
class Work:
    """What a worker hands back for one input."""

    index: int
    status: str
    key: str = ""
    reason: str = ""
    prepared: Prepared | None = None
    decode_seconds: float = 0.0
    hashed: bool = False  # the worker read the file to hash it (no usable plan entry)

    def pin_memory(self) -> Work:
        """Called by the DataLoader's pin-memory thread (encoder on a GPU): without it a Work is passed through
        unpinned, and every host-to-device copy would go through a staging buffer."""
        if self.prepared is not None:
            self.prepared = self.prepared.pin_memory()
        return self


class PrepareDataset(Dataset):
    """Map-style dataset over input items: hash, check the cache, decode, prepare (in workers)."""

    def __init__(self, items: list[InputItem], preparer, committed: frozenset[str],
                 num_partitions: int, partition: int, require: tuple[str, ...],
                 failed_before: dict[str, str] | None = None, keys: list[str | None] | None = None,
                 timeout: float = 0.0):
        self.items = items
        self.timeout = timeout  # seconds per item (0 = none): a hung read or decode becomes a failure
        self.keys = keys  # content keys known from a plan (None: hash the file)
        self.preparer = preparer
        # path -> content key of its recorded failure ("" if it could not be read): skipped while the
        # file is still that content; a file replaced since (new content) is tried again.
        self.failed_before = failed_before or {}
        self.committed = committed
        self.num_partitions = num_partitions
        self.partition = partition
        self.require = require

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Work:
        if self.timeout <= 0 or threading.current_thread() is not threading.main_thread():
            return self._work(index)
        # SIGALRM interrupts even a blocked read (a file on a hung mount); its handler raises ItemTimeout,
        # a BaseException, so the preparer's `except Exception` can't swallow it.
        previous = signal.signal(signal.SIGALRM, _raise_timeout)
        signal.setitimer(signal.ITIMER_REAL, self.timeout)
        try:
            return self._work(index)
        except ItemTimeout:
            return Work(index, FAILED, reason=f"timed out after {self.timeout:g}s (extract.item_timeout)")
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)

    def _work(self, index: int) -> Work:
        path = self.items[index].path
        t0 = time.perf_counter()
        key = self.keys[index] if self.keys is not None else None
        hashed = key is None
        if hashed:
            try:
                key = content_key(path)
            except OSError as err:
                if path in self.failed_before and not self.failed_before[path]:
                    return Work(index, FAILED_BEFORE, hashed=True)  # still unreadable, as recorded
                return Work(index, FAILED, reason=open_reason(err), hashed=True)
        work = self._prepare(index, path, key, t0)
        work.hashed = hashed
        return work

    def _prepare(self, index: int, path: str, key: str, t0: float) -> Work:
        if self.failed_before.get(path) == key:
            return Work(index, FAILED_BEFORE, key=key)
        if partition_of(key, self.num_partitions) != self.partition:
            return Work(index, ELSEWHERE, key=key)
        if key in self.committed:
            return Work(index, CACHED, key=key)
        try:
            prepared = self.preparer(path)
        except Exception as err:  # noqa: BLE001 - one bad file must never stop the run
            reason = str(err).splitlines()[0] if str(err) else type(err).__name__
            return Work(index, FAILED, key=key, reason=f"{type(err).__name__}: {reason}")
        missing = [m for m in self.require if prepared.get(m) is None]
        if missing:
            return Work(index, FAILED, key=key, reason=prepared.reason(missing[0]))
        if not prepared.inputs:
            why = prepared.reason("video") if "video" in prepared.missing else next(iter(prepared.missing.values()), "")
            return Work(index, FAILED, key=key, reason=why or "no usable stream")
        return Work(index, OK, key=key, prepared=prepared, decode_seconds=time.perf_counter() - t0)


class ItemTimeout(BaseException):
    """One input took longer than extract.item_timeout."""


def _raise_timeout(signum, frame) -> None:
    raise ItemTimeout


@dataclass
class ExtractSummary:
    namespace: str
    cache_dir: str
    inputs: int = 0
    extracted: int = 0
    reused: int = 0  # already in the cache (same content key)
    duplicates: int = 0  # same content as another input of this run
    other_partition: int = 0
    skipped_failed: int = 0  # failed in an earlier run; retry with --retry-failed
    without_audio: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    shards: list[str] = field(default_factory=list)
    seconds: float = 0.0
    decode_seconds: float = 0.0  # summed over workers
    infer_seconds: float = 0.0  # the model's forward passes
    transfer_seconds: float = 0.0  # inputs to the encoder's device (and compact inputs' transforms there)
    write_seconds: float = 0.0  # shard commits, in the writer thread
    decode_wait_seconds: float = 0.0  # the main thread waiting for decoded items
    write_wait_seconds: float = 0.0  # the main thread waiting for the writer (queue full, final commits)
    model_seconds: float | None = None  # building/loading the encoder; None = not built (nothing to embed)
    planned: int = 0  # inputs whose key came from the source's plan (no read to hash them)
    hashed: int = 0  # inputs read to hash them in this run
    unit: str = "video"  # what an item is, for the summary ("track" for a music library)
    item_keys: dict[str, str] = field(default_factory=dict)  # input path -> content key, where it was read

    @property
    def videos_per_second(self) -> float:
        return self.extracted / self.seconds if self.seconds else 0.0

    def lines(self) -> list[str]:
        out = [
            f"namespace {self.namespace[:16]} in {self.cache_dir}",
            f"inputs {self.inputs}: extracted {self.extracted}, reused from cache {self.reused}, "
            f"duplicate content {self.duplicates}, failed {len(self.failed)}"
            + (f", other partitions {self.other_partition}" if self.other_partition else "")
            + (f", skipped earlier failures {self.skipped_failed} (--retry-failed)" if self.skipped_failed else ""),
            f"keys: {self.planned} from the plan, {self.hashed} hashed in this run",
            f"time {self.seconds:.1f}s ({self.videos_per_second:.2f} {self.unit}s/s); "
            f"main thread: decode wait {self.decode_wait_seconds:.1f}s, to device {self.transfer_seconds:.1f}s, "
            f"forward {self.infer_seconds:.1f}s, "
            f"write wait {self.write_wait_seconds:.1f}s; decode {self.decode_seconds:.1f}s (worker total), "
            f"write {self.write_seconds:.1f}s (writer thread); {len(self.shards)} shard(s) committed; "
            + ("model not loaded (nothing to embed)" if self.model_seconds is None
               else f"model load {self.model_seconds:.1f}s"),
        ]
        if self.without_audio:
            out.append(f"{self.without_audio} item(s) have no audio: video embeddings stored, audio marked missing")
        if self.failed:
            counts = collections.Counter(reason for _, reason in self.failed)
            out.append("failures by reason: " + "; ".join(f"{n}× {r}" for r, n in counts.most_common(5)))
            for path, reason in self.failed[:10]:
                out.append(f"  failed: {os.fsencode(path).decode('utf-8', 'backslashreplace')}: {reason}")
            if len(self.failed) > 10:
                out.append(f"  … {len(self.failed) - 10} more in the namespace's failures.jsonl")
        return out


class ShardBuffer:
    """Rows waiting to be committed; every `size` rows or `seconds` seconds they go to the writer thread."""

    def __init__(self, ns: Namespace, config: Config, writer: ShardWriter):
        self.ns, self.writer = ns, writer
        self.size, self.seconds = config.extract.shard_size, config.extract.shard_seconds
        self.rows: list[Row] = []
        self.last_commit = time.monotonic()

    def add(self, row: Row) -> None:
        self.rows.append(row)
        if len(self.rows) >= self.size or time.monotonic() - self.last_commit >= self.seconds:
            self.commit()

    def commit(self) -> None:
        if self.rows:
            self.writer.put(self.rows)
            self.rows = []
        self.last_commit = time.monotonic()


def run_extraction(
    config: Config,
    source: str | Path | list[InputItem],
    *,
    require: tuple[str, ...] = ("video",),
    extensions: tuple[str, ...] = VIDEO_EXTENSIONS,
    progress: bool = True,
    windows: WindowLayout | None = None,
) -> ExtractSummary:
    """Extract every input into the namespace of `config`'s extractor settings; returns the summary.

    With `windows`, the inputs are music tracks: their audio is embedded window by window into the
    track namespace of those settings + that layout (pass ``require=("audio",)``).
    The encoder is built only once an item needs embedding: a fully cached rerun costs hashes, not
    a model load (seconds and gigabytes with the huge architecture).
    """
    t_start = time.perf_counter()
    items = list(source) if isinstance(source, list) else list_inputs(source, extensions)
    if windows is None:
        settings = extractor_settings(config, download=True, progress=progress)
    else:
        settings = window_settings(config, windows, download=True, progress=progress)
    ns = FeatureCache(config.cache_dir).create(settings)
    ext = config.extract
    summary = ExtractSummary(namespace=ns.fingerprint, cache_dir=str(config.cache_dir), inputs=len(items),
                             unit="video" if windows is None else "track")
    with ns.lock(ext.shard_index, ext.num_shards):
        ns.clean_temp_files(partition=ext.shard_index, num_partitions=ext.num_shards)
        committed = frozenset(ns.committed_keys())
        failures = {f.path: f.key for f in ns.failures()}  # path -> content key of its recorded failure
        failed_before = {} if ext.retry_failed else failures
        plan = read_plan(ns.root, plan_source(source, items))
        todo, keys = (items, None) if plan is None else _apply_plan(plan, items, committed, failed_before, ext,
                                                                    summary)
        progress_file = ProgressFile(ns.root, ext.shard_index, ext.num_shards)
        progress_file.update(force=True, todo=len(todo), **_counts(summary))
        if not todo:
            progress_file.update(force=True, finished=True)
            summary.seconds = time.perf_counter() - t_start
            return summary
        preparer = make_preparer(config) if windows is None else make_window_preparer(config, windows)
        dataset = PrepareDataset(todo, preparer, committed, ext.num_shards, ext.shard_index, require,
                                 failed_before=failed_before, keys=keys, timeout=ext.item_timeout)
        loader = DataLoader(
            dataset,
            batch_size=None,
            shuffle=False,
            num_workers=ext.workers,
            prefetch_factor=ext.prefetch if ext.workers else None,
            pin_memory=backend(config).uses_device and pick_device(config.encoder.device).type == "cuda",
            collate_fn=_identity,
            in_order=False,  # a slow file must not hold up the ones behind it
        )
        # Libraries a preparer must not first initialise inside a forked worker are loaded here.
        if hasattr(preparer, "warm_up"):
            preparer.warm_up()
        # Start the decoding workers before the model exists: they are forked before CUDA is initialised
        # in this process, and they keep decoding while the weights load on the first item to embed.
        stream = iter(loader)
        embedder = _LazyEmbedder(config, progress, summary)
        if plan is not None or not committed:
            # Every item left is one to embed (the plan settled the cached ones; an empty namespace has none):
            # build the model now, while the workers decode the first batch. Otherwise wait for the first
            # item that needs it, so a fully cached rerun without a plan never builds one.
            embedder.start()
        writer = ShardWriter(ns, partition=ext.shard_index, num_partitions=ext.num_shards, depth=ext.write_queue,
                             on_commit=lambda _name, n: progress_file.update(force=True, add_committed=n,
                                                                             **_counts(summary)))
        buffer = ShardBuffer(ns, config, writer)
        bar = tqdm(total=len(todo), unit=summary.unit, desc="extract" if windows is None else "index",
                   disable=not progress, dynamic_ncols=True)
        try:
            _consume(stream, todo, embedder, buffer, summary, failures, config.encoder.batch_size, bar, progress_file)
        except BaseException:
            with contextlib.suppress(BaseException):  # the run's own error is the one to report
                writer.close()
            raise
        finally:
            bar.close()
        writer.close()
        summary.shards, summary.write_seconds = writer.shards, writer.write_seconds
        summary.write_wait_seconds = writer.wait_seconds
        progress_file.update(force=True, finished=True, **_counts(summary))
    summary.seconds = time.perf_counter() - t_start
    return summary


def plan_source(source: str | Path | list[InputItem], items: list[InputItem]) -> str | Path | list[str]:
    """What identifies the input source of a plan: the folder or manifest, or the listed paths."""
    return [it.path for it in items] if isinstance(source, list) else source


def write_source_plan(config: Config, source: str | Path | list[InputItem], *,
                      extensions: tuple[str, ...] = VIDEO_EXTENSIONS, progress: bool = True) -> PlanSummary:
    """Hash every input of `source` once and write its plan into the namespace of `config`'s settings,
    with partitions for extract.num_shards; partition jobs then read their items from it."""
    t0 = time.perf_counter()
    items = list(source) if isinstance(source, list) else list_inputs(source, extensions)
    ns = FeatureCache(config.cache_dir).create(extractor_settings(config, download=True, progress=progress))
    n = config.extract.num_shards
    plan = write_plan(ns.root, plan_source(source, items), [it.path for it in items], n,
                      threads=max(1, config.extract.workers))
    return PlanSummary(str(plan.path), len(items), plan.hashed, len(plan.errors), plan.partition_counts(n),
                       time.perf_counter() - t0)


@dataclass
class PlanSummary:
    path: str
    inputs: int
    hashed: int  # read to hash them now (the others were in the previous plan, unchanged)
    unreadable: int
    per_partition: list[int]  # unique keys per partition
    seconds: float

    def lines(self) -> list[str]:
        return [f"plan {self.path}: {self.inputs} inputs, {self.hashed} hashed in {self.seconds:.1f}s "
                f"(the others unchanged since the last plan)"
                + (f", {self.unreadable} unreadable (extract records them)" if self.unreadable else ""),
                f"items per partition ({len(self.per_partition)}): "
                + " ".join(str(c) for c in self.per_partition)]


def _apply_plan(plan: Plan, items: list[InputItem], committed: frozenset[str], failed_before: dict[str, str],
                ext, summary: ExtractSummary) -> tuple[list[InputItem], list[str | None]]:
    """Settle every planned input that is not this partition's work without opening it (another
    partition's, cached, failed before); returns the rest, with their planned keys (None: hash it)."""
    todo: list[InputItem] = []
    keys: list[str | None] = []
    for item in items:
        key = plan.key_for(item.path)
        if key is not None:
            summary.planned += 1
            summary.item_keys[item.path] = key
            if partition_of(key, ext.num_shards) != ext.shard_index:
                summary.other_partition += 1
                continue
            if failed_before.get(item.path) == key:
                summary.skipped_failed += 1
                continue
            if key in committed:
                summary.reused += 1
                continue
        todo.append(item)
        keys.append(key)
    return todo, keys


def _consume(stream, todo: list[InputItem], embedder: _LazyEmbedder, buffer: ShardBuffer, summary: ExtractSummary,
             failures: dict[str, str], batch_size: int, bar: tqdm, progress_file: ProgressFile) -> None:
    """The main thread's loop: take decoded items as workers finish them, embed in batches, queue shards."""
    seen: set[str] = set()
    batch: list[Work] = []
    while True:
        t0 = time.perf_counter()
        work = next(stream, None)
        summary.decode_wait_seconds += time.perf_counter() - t0
        if work is None:
            break
        bar.update(1)
        item = todo[work.index]
        summary.hashed += work.hashed
        if work.key:
            summary.item_keys[item.path] = work.key
        if work.status == FAILED_BEFORE:
            summary.skipped_failed += 1
        elif work.status == ELSEWHERE:
            summary.other_partition += 1
        elif work.status == CACHED:
            summary.reused += 1
        elif work.status == FAILED:
            buffer.ns.record_failure(item.path, work.reason, work.key)
            summary.failed.append((item.path, work.reason))
        elif work.key in seen:
            summary.duplicates += 1
        else:
            seen.add(work.key)
            summary.decode_seconds += work.decode_seconds
            embedder.start()  # build the model while the workers decode the rest of the batch
            batch.append(work)
            if len(batch) >= batch_size:
                _embed_batch(embedder, batch, todo, buffer, summary, failures)
                batch = []
        bar.set_postfix(ok=summary.extracted + len(batch), cached=summary.reused, failed=len(summary.failed),
                        refresh=False)
        progress_file.update(**_counts(summary))  # at most every few seconds
    if batch:
        _embed_batch(embedder, batch, todo, buffer, summary, failures)
    buffer.commit()


def _counts(summary: ExtractSummary) -> dict[str, int]:
    """The summary's counts that a partition's progress file carries."""
    return {"failed": len(summary.failed), "reused": summary.reused, "other_partition": summary.other_partition}


def _identity(x):
    return x


class _LazyEmbedder:
    """make_embedder(config) once an item needs it; the build time goes into the summary (`model_seconds`,
    None while no model was built), so a run says whether it paid for a model at all.

    `start()` (called on the first item that needs embedding) builds it in a background thread while the
    workers go on decoding the rest of the first batch; `get()` waits for it. The build's error, if any,
    is raised by `get()` in the main thread."""

    def __init__(self, config: Config, progress: bool, summary: ExtractSummary):
        self.config, self.progress, self.summary = config, progress, summary
        self._embedder = None
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def start(self) -> None:
        if self._embedder is None and self._thread is None:
            self._thread = threading.Thread(target=self._build, name="mvbind-model-build", daemon=True)
            self._thread.start()

    def _build(self) -> None:
        t0 = time.perf_counter()
        try:
            self._embedder = make_embedder(self.config, progress=self.progress)
        except BaseException as err:  # noqa: BLE001 - handed to the main thread by get()
            self._error = err
        self.summary.model_seconds = time.perf_counter() - t0

    def get(self):
        if self._thread is None:
            self._build()
        else:
            self._thread.join()
        if self._error is not None:
            error, self._error, self._thread = self._error, None, None
            raise error
        return self._embedder


def _embed_batch(embedder: _LazyEmbedder, batch: list[Work], todo: list[InputItem], buffer: ShardBuffer,
                 summary: ExtractSummary, earlier_failures: dict[str, str]) -> None:
    model = embedder.get()
    t0 = time.perf_counter()
    moved = getattr(model, "transfer_seconds", 0.0)
    out = model.embed([w.prepared for w in batch])
    transfer = getattr(model, "transfer_seconds", 0.0) - moved
    summary.transfer_seconds += transfer
    summary.infer_seconds += time.perf_counter() - t0 - transfer
    for work, a, v in zip(batch, out["audio"], out["video"]):
        item = todo[work.index]
        if a is None:
            summary.without_audio += 1
        starts = work.prepared.audio_starts
        wins = None
        if starts is not None and a is not None:  # library windows: the row's audio is their mean
            wins, a = a, a.mean(axis=0, keepdims=True)
        buffer.add(Row(key=work.key, path=item.path, audio=a, video=v, duration=work.prepared.duration,
                       id=item.id, music_id=item.music_id, split=item.split, windows=wins, window_starts=starts))
        summary.extracted += 1
        if item.path in earlier_failures:
            buffer.ns.record_resolved(item.path, work.key)
