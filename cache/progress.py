"""Per-partition progress files, written as a job works, read by `mvbind cache status` at any time.

    <namespace>/progress/partition-<i>-of-<N>.json

One small JSON file per partition job: who runs it (host, pid), when it started and last wrote,
what it has to do this run and how much is committed, failed or reused so far, and whether it
finished. It is replaced whole (temporary name, then rename), so a reader never sees half a file,
and rewritten at every shard commit and at most every `every` seconds in between. It is advisory:
the shards and the failure log stay the truth; a job killed mid-run leaves its last state with a
last-update time that stops moving.
"""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from pathlib import Path


def progress_dir(ns_root: Path) -> Path:
    return Path(ns_root) / "progress"


class ProgressFile:
    """The progress file of one partition job; `update()` from any thread."""

    def __init__(self, ns_root: Path, partition: int, num_partitions: int, *, every: float = 2.0):
        self.path = progress_dir(ns_root) / f"partition-{partition}-of-{num_partitions}.json"
        self.every = every
        self.state = {"partition": partition, "num_partitions": num_partitions, "host": os.uname().nodename,
                      "pid": os.getpid(), "started": time.time(), "updated": 0.0, "todo": 0, "committed": 0,
                      "failed": 0, "reused": 0, "other_partition": 0, "finished": False}
        self._lock = threading.Lock()
        self._last = 0.0

    def update(self, *, force: bool = False, add_committed: int = 0, **counts) -> None:
        """Set counts (and add committed rows); write if forced or `every` seconds passed since the last write."""
        with self._lock:
            self.state.update(counts)
            self.state["committed"] += add_committed
            now = time.monotonic()
            if not force and now - self._last < self.every:
                return
            self._last = now
            self.state["updated"] = time.time()
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(f".tmp-{uuid.uuid4().hex[:8]}-{self.path.name}")
            try:
                tmp.write_text(json.dumps(self.state))
                os.replace(tmp, self.path)
            finally:
                tmp.unlink(missing_ok=True)


def read_progress(ns_root: Path) -> list[dict]:
    """Every partition's last written state (unreadable files are skipped: they are advisory)."""
    folder = progress_dir(ns_root)
    out = []
    for p in sorted(folder.glob("partition-*.json")) if folder.exists() else []:
        try:
            out.append(json.loads(p.read_text()))
        except (OSError, ValueError):
            continue
    return out
