"""Shard commits off the model's thread: a bounded queue and one writer thread.

Committing a shard (HDF5 write, fsync, rename, directory fsync) takes from milliseconds to seconds;
done inline, the GPU waits for the disk at every commit. Here the main thread hands a full buffer
of rows to one writer thread and goes back to embedding; the queue is bounded
(`extract.write_queue` shards), so a disk slower than the model slows the model down instead of
filling memory. There is one writer, so shards are committed in the order they were filled.

Crash safety is unchanged: every shard is still written to a temporary name, fsynced and renamed
(`Namespace.write_shard`), so a `kill -9` leaves each shard whole or absent; what a crash can lose
grows from the shard being filled to that shard plus the ones waiting in the queue.

A failed commit (disk full, read-only cache, ...) is raised in the main thread by the next `put`
or by `close`, so the run stops with the writer's own error; the writer drops what is queued
behind a failure (committing later shards after an earlier one was lost would hide the loss).
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable

from mvbind.cache import Namespace, Row

_STOP = object()


class ShardWriter:
    """Commits lists of rows as shards of one partition, in a background thread."""

    def __init__(self, ns: Namespace, *, partition: int, num_partitions: int, depth: int,
                 on_commit: Callable[[str, int], None] | None = None):
        self.ns, self.partition, self.num_partitions = ns, partition, num_partitions
        self.on_commit = on_commit  # (shard name, rows) after each commit, in the writer thread
        self.shards: list[str] = []
        self.write_seconds = 0.0  # in the writer thread: HDF5 write + fsync + rename
        self.wait_seconds = 0.0  # in the caller: blocked on a full queue
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None  # to raise in the caller (once)
        self._failed = False  # stays set: nothing is written after a failed commit
        self._thread = threading.Thread(target=self._run, name="mvbind-shard-writer", daemon=True)
        self._thread.start()

    def put(self, rows: list[Row]) -> None:
        """Queue rows for one shard; blocks while the queue is full; raises the writer's error, if any."""
        self._raise_error()
        t0 = time.perf_counter()
        self._queue.put(rows)
        self.wait_seconds += time.perf_counter() - t0
        self._raise_error()

    def close(self) -> None:
        """Commit everything queued, stop the thread, and raise the writer's error, if any."""
        if self._thread.is_alive():
            t0 = time.perf_counter()
            self._queue.put(_STOP)
            self._thread.join()
            self.wait_seconds += time.perf_counter() - t0
        self._raise_error()

    def _raise_error(self) -> None:
        if self._error is not None:
            err, self._error = self._error, None
            raise err

    def _run(self) -> None:
        while True:
            rows = self._queue.get()
            if rows is _STOP:
                return
            if self._failed:
                continue  # drain without writing, so a blocked put() returns and sees the error
            try:
                t0 = time.perf_counter()
                path = self.ns.write_shard(rows, partition=self.partition, num_partitions=self.num_partitions)
                self.write_seconds += time.perf_counter() - t0
                self.shards.append(path.name)
                if self.on_commit is not None:
                    self.on_commit(path.name, len(rows))
            except BaseException as err:  # noqa: BLE001 - handed to the main thread, raised there
                self._failed, self._error = True, err
