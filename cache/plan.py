"""The plan of one input source: every input's content key, hashed once, in the namespace.

Without a plan, each of N partition jobs hashes every input to learn which items are its own, so
the whole collection is read N times before any decoding. A plan (`mvbind extract --plan-only`)
hashes each file once and records, per input, its key, size, modification time and partition;
a partition job then reads its items from the plan and opens only the files it owns.

    <namespace>/plans/<source id>.jsonl    a header line, then one line per input

The source id is the source's absolute path (a folder or a manifest), or the digest of the input
paths when the inputs are given as a list. A planned key is used only while the file's size and
modification time (nanoseconds) are those recorded, so a file replaced since the plan is hashed
again (a `stat`, not a read); inputs the plan does not list are hashed as before. The file is
written to a temporary name and renamed, so a reader sees a whole plan or none.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import time
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from mvbind.cache.keys import content_key, partition_of

PLAN_SCHEMA = 1


@dataclass(frozen=True)
class PlanEntry:
    key: str
    size: int
    mtime_ns: int


@dataclass
class Plan:
    """A source's planned keys (path -> entry); `error` lists inputs that could not be read when planned."""

    path: Path
    source: str
    num_partitions: int
    created: float
    entries: dict[str, PlanEntry] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    hashed: int = 0  # files read to write this plan (the rest came unchanged from the previous plan)

    def key_for(self, path: str) -> str | None:
        """The planned key of `path` if the file is unchanged since the plan (size and mtime), else None."""
        entry = self.entries.get(path)
        if entry is None:
            return None
        try:
            st = os.stat(path)
        except OSError:
            return None
        return entry.key if (st.st_size, st.st_mtime_ns) == (entry.size, entry.mtime_ns) else None

    def partition_counts(self, num_partitions: int) -> list[int]:
        """Planned items (unique keys) per partition for N partitions."""
        counts = [0] * num_partitions
        for key in {e.key for e in self.entries.values()}:
            counts[partition_of(key, num_partitions)] += 1
        return counts


def source_id(source: str | Path | Sequence[str]) -> tuple[str, str]:
    """(id, label) of an input source: a folder or manifest by its absolute path, a list by its paths."""
    if isinstance(source, (str, Path)):
        label = str(Path(source).resolve())
    else:
        label = "inputs:" + hashlib.sha256("\0".join(source).encode("utf-8", "surrogateescape")).hexdigest()
    return hashlib.sha256(label.encode("utf-8", "surrogateescape")).hexdigest()[:16], label


def plan_file(ns_root: Path, sid: str) -> Path:
    return Path(ns_root) / "plans" / f"{sid}.jsonl"


def _hash_one(path: str) -> dict:
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):  # a pipe or device could block the plan for good: the job tries it
            return {"error": "not a regular file"}
        key = content_key(path)
    except OSError as err:
        return {"error": f"{err.strerror or type(err).__name__}"}
    return {"key": key, "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def write_plan(ns_root: Path, source: str | Path | Sequence[str], paths: Sequence[str], num_partitions: int,
               *, threads: int = 2) -> Plan:
    """Write the source's plan: every path hashed (in `threads` threads: hashlib releases the GIL), except
    those the source's previous plan already has unchanged (same size and mtime), so planning again after
    new files arrived reads only the new ones."""
    sid, label = source_id(source)
    previous = load_plan(plan_file(ns_root, sid))
    known: dict[str, dict] = {}
    for path in paths:
        key = previous.key_for(path) if previous is not None else None
        if key is not None:
            entry = previous.entries[path]
            known[path] = {"key": key, "size": entry.size, "mtime_ns": entry.mtime_ns}
    todo = [p for p in paths if p not in known]
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        fresh = dict(zip(todo, pool.map(_hash_one, todo)))
    results = [known.get(p) or fresh[p] for p in paths]
    plan = Plan(plan_file(ns_root, sid), label, num_partitions, time.time(), hashed=len(fresh))
    lines = [json.dumps({"plan": PLAN_SCHEMA, "source": label, "items": len(paths),
                         "num_partitions": num_partitions, "created": round(plan.created, 3)})]
    for path, res in zip(paths, results):
        record = {"path": os.fsencode(path).decode("utf-8", "backslashreplace"), "raw_path": os.fsencode(path).hex()}
        if "key" in res:
            plan.entries[path] = PlanEntry(res["key"], res["size"], res["mtime_ns"])
            record.update(res, partition=partition_of(res["key"], num_partitions))
        else:
            plan.errors[path] = res["error"]
            record.update(res)
        lines.append(json.dumps(record, ensure_ascii=True))
    plan.path.parent.mkdir(parents=True, exist_ok=True)
    tmp = plan.path.with_name(f".tmp-{uuid.uuid4().hex[:8]}-{plan.path.name}")
    try:
        with open(tmp, "w") as f:
            f.write("\n".join(lines) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, plan.path)
    finally:
        tmp.unlink(missing_ok=True)
    return plan


def read_plan(ns_root: Path, source: str | Path | Sequence[str]) -> Plan | None:
    """The plan of `source` in this namespace, or None if there is none (or it can't be read)."""
    sid, _ = source_id(source)
    return load_plan(plan_file(ns_root, sid))


def load_plan(path: Path) -> Plan | None:
    try:
        text = Path(path).read_text()
        head, *rows = text.splitlines()
        meta = json.loads(head)
    except (OSError, ValueError):
        return None
    plan = Plan(Path(path), meta.get("source", ""), int(meta.get("num_partitions", 1)), meta.get("created", 0.0))
    for line in rows:
        rec = json.loads(line)
        p = os.fsdecode(bytes.fromhex(rec["raw_path"]))
        if "key" in rec:
            plan.entries[p] = PlanEntry(rec["key"], int(rec["size"]), int(rec["mtime_ns"]))
        else:
            plan.errors[p] = rec.get("error", "")
    return plan


def namespace_plans(ns_root: Path) -> list[Plan]:
    """Every plan in the namespace (for `mvbind cache status`)."""
    folder = Path(ns_root) / "plans"
    plans = [load_plan(p) for p in sorted(folder.glob("*.jsonl")) if not p.name.startswith(".tmp-")] \
        if folder.exists() else []
    return [p for p in plans if p is not None]
