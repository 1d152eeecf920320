"""The feature cache on disk: one namespace per extractor fingerprint.

    <cache>/<fingerprint[:16]>/
        settings.json          resolved extractor settings + full fingerprint (written once)
        shards/*.h5            committed shards (temp files start with ".tmp-")
        failures.jsonl         one line per failed item: path, key, reason, time (append-only)
        locks/                 one lock file per partition being extracted
        quarantine/            damaged shards moved aside by a reader (never deleted)

Nothing here deletes or overwrites a committed shard.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import logging
import os
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mvbind.cache.shards import (
    TMP_PREFIX,
    DamagedShard,
    Row,
    ShardData,
    WindowData,
    _reason,
    read_catalog,
    read_keys,
    read_rows,
    read_shard,
    read_windows,
    write_shard,
)
from mvbind.errors import MvbindError

log = logging.getLogger(__name__)
NAMESPACE_SCHEMA = 1


def fingerprint(settings: dict) -> str:
    """sha256 of the canonical JSON of everything that changes an embedding."""
    blob = json.dumps({"namespace_schema": NAMESPACE_SCHEMA, **settings}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


def settings_label(settings: dict) -> str:
    """A short name for a namespace's features, for listings and tables: 'imagebind/huge', 'signal/2',
    'imported mgsv'."""
    enc = settings.get("encoder", "")
    if not isinstance(enc, dict):
        return str(enc) or "?"
    if enc.get("name") == "imported":
        return f"imported {enc.get('source', '')}".strip()
    return "/".join(str(enc[k]) for k in ("name", "arch", "version") if k in enc) or "?"


class CacheError(MvbindError):
    """The cache can't be used as asked (missing namespace, lock held, ...)."""


@dataclass
class Failure:
    path: str
    reason: str
    key: str = ""
    time: float = 0.0


@dataclass
class Features:
    """Everything stage two needs, row-aligned. Strings are numpy object arrays ("" = absent)."""

    keys: np.ndarray
    paths: np.ndarray
    audio: np.ndarray  # (n, audio_clips, dim) float16
    audio_mask: np.ndarray
    video: np.ndarray  # (n, video_clips, dim) float16
    video_mask: np.ndarray
    duration: np.ndarray
    ids: np.ndarray
    music_ids: np.ndarray
    splits: np.ndarray
    shard_of: np.ndarray = field(default_factory=lambda: np.zeros(0, object))  # shard file of each row

    def __len__(self) -> int:
        return len(self.keys)

    def subset(self, index: np.ndarray) -> Features:
        return Features(**{k: getattr(self, k)[index] for k in self.__dataclass_fields__})


@dataclass
class Windows:
    """Ragged per-item audio windows (a music library namespace): item i's windows are rows
    offsets[i]:offsets[i + 1] of `audio` and `starts`."""

    keys: np.ndarray  # (n,) str
    paths: np.ndarray  # (n,) str
    duration: np.ndarray  # (n,) float32
    offsets: np.ndarray  # (n + 1,) int64
    starts: np.ndarray  # (total,) float32 seconds into the item
    audio: np.ndarray  # (total, dim) float16

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def counts(self) -> np.ndarray:
        return np.diff(self.offsets)


class Namespace:
    """One fingerprint's directory: shards, settings, failure log, locks."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.shard_dir = self.root / "shards"
        self.failure_log = self.root / "failures.jsonl"
        try:
            meta = json.loads((self.root / "settings.json").read_text())
        except (OSError, ValueError) as err:
            raise CacheError(f"{self.root}/settings.json: unreadable ({err}); not an mvbind cache namespace") from None
        self.fingerprint: str = meta["fingerprint"]
        self.settings: dict = meta["settings"]
        self.created: float = meta.get("created", 0.0)
        self.note: dict = meta.get("note", {})  # written once with the settings, not fingerprinted (e.g. a source file)

    def __repr__(self) -> str:
        return f"Namespace({self.fingerprint[:16]}, {self.root})"

    @property
    def label(self) -> str:
        return settings_label(self.settings)

    @property
    def audio_shape(self) -> tuple[int, int]:
        return tuple(self.settings["shapes"]["audio"])

    @property
    def video_shape(self) -> tuple[int, int]:
        return tuple(self.settings["shapes"]["video"])

    # -- shards ---------------------------------------------------------------------------
    def shard_paths(self) -> list[Path]:
        if not self.shard_dir.exists():
            return []
        return sorted(p for p in self.shard_dir.glob("*.h5") if not p.name.startswith(TMP_PREFIX))

    def quarantine(self, path: Path, reason: str) -> None:
        """Move a damaged shard aside (never deleted) and say so."""
        dest_dir = self.root / "quarantine"
        dest_dir.mkdir(exist_ok=True)
        dest = dest_dir / path.name
        with contextlib.suppress(OSError):
            os.replace(path, dest)
            (dest_dir / (path.name + ".reason")).write_text(reason + "\n")
        log.warning("damaged shard %s: %s; moved to %s", path, reason, dest)

    def committed_keys(self) -> set[str]:
        keys: set[str] = set()
        for path in self.shard_paths():
            try:
                keys.update(read_keys(path))
            except DamagedShard as err:
                self.quarantine(path, str(err))
        return keys

    def catalog(self) -> Iterator[tuple[str, str, bool, bool, float]]:
        """(key, source path, has video, has audio, duration) of every committed item, first copy of a key
        only, in shard order; reads no embeddings."""
        seen: set[str] = set()
        for path in self.shard_paths():
            try:
                cat = read_catalog(path)
            except DamagedShard as err:
                self.quarantine(path, str(err))
                continue
            for i, key in enumerate(cat.keys):
                if key not in seen:
                    seen.add(key)
                    yield key, cat.paths[i], bool(cat.video_mask[i]), bool(cat.audio_mask[i]), float(cat.duration[i])

    def iter_shards(self) -> Iterator[tuple[Path, ShardData]]:
        for path in self.shard_paths():
            try:
                yield path, read_shard(path)
            except DamagedShard as err:
                self.quarantine(path, str(err))

    def write_shard(self, rows: list[Row], *, partition: int = 0, num_partitions: int = 1,
                    prefix: str | None = None) -> Path:
        """Commit rows as one new shard (atomic; a new unique file name, never an overwrite).

        `prefix` names shards written outside any partition (e.g. "online": videos a `Recommender`
        embedded): no lock is needed, since the name is unique and a key cached twice is harmless.
        """
        self.shard_dir.mkdir(parents=True, exist_ok=True)
        head = prefix or _shard_prefix(partition, num_partitions)
        name = f"{head}-{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}.h5"
        return write_shard(
            self.shard_dir,
            name,
            rows,
            audio_shape=self.audio_shape,
            video_shape=self.video_shape,
            attrs={"fingerprint": self.fingerprint, "partition": partition, "num_partitions": num_partitions},
        )

    def clean_temp_files(self, partition: int, num_partitions: int) -> int:
        """Remove temp files of this partition left by a crashed writer (never committed data).

        Call only while holding the partition's lock: then no live writer owns them.
        """
        removed = 0
        if self.shard_dir.exists():
            tag = f"-{_shard_prefix(partition, num_partitions)}-"
            for p in self.shard_dir.glob(TMP_PREFIX + "*"):
                if tag in p.name:
                    with contextlib.suppress(OSError):
                        p.unlink()
                        removed += 1
        return removed

    # -- reading for stage two ------------------------------------------------------------
    def load(self, pool: Callable[[np.ndarray], np.ndarray] | None = None) -> Features:
        """All committed items, one row per key (a key cached twice keeps its first copy).

        With `pool` ((n, clips, dim) → (n, dim), e.g. a mean), each shard's per-clip embeddings are
        pooled as the shard is read, so memory grows with items × dim instead of items × clips × dim
        (stage two at millions of items); `audio` and `video` are then (n, dim).
        """
        parts: list[ShardData] = []
        names: list[np.ndarray] = []
        seen: set[str] = set()
        for path, data in self.iter_shards():
            keys = data.keys.astype(str)
            first = np.array([not (k in seen or seen.add(k)) for k in keys], bool)
            if not first.all():
                data = _take(data, np.flatnonzero(first))
            if pool is not None:
                data = dataclasses.replace(data, audio=pool(data.audio), video=pool(data.video))
            parts.append(data)
            names.append(np.full(len(data), path.name, dtype=object))
        return self._features(parts, names, pooled=pool is not None)

    def _rows_by_shard(self, keys) -> Iterator[tuple[Path, np.ndarray, list[str]]]:
        """(shard, sorted row indices, their keys) for the wanted keys, first copy of each key only."""
        wanted = set(keys)
        for path in self.shard_paths():
            if not wanted:
                return
            try:
                shard_keys = read_keys(path)
            except DamagedShard as err:
                self.quarantine(path, str(err))
                continue
            rows = [i for i, k in enumerate(shard_keys) if k in wanted]
            seen: set[str] = set()
            rows = [i for i in rows if not (shard_keys[i] in seen or seen.add(shard_keys[i]))]
            if rows:
                wanted -= seen
                yield path, np.asarray(rows, np.int64), [shard_keys[i] for i in rows]

    def key_index(self) -> KeyIndex:
        """An incremental key → (shard, row) index: each shard's keys are read once, new shards on refresh."""
        return KeyIndex(self)

    def select(self, keys) -> Features:
        """The committed items with these keys (reads only their rows); missing keys are left out."""
        parts: list[ShardData] = []
        names: list[np.ndarray] = []
        for path, rows, _ in self._rows_by_shard(keys):
            try:
                data = read_rows(path, rows)
            except DamagedShard as err:
                self.quarantine(path, str(err))
                continue
            parts.append(data)
            names.append(np.full(len(data), path.name, dtype=object))
        return self._features(parts, names)

    def _features(self, parts: list[ShardData], names: list[np.ndarray], pooled: bool = False) -> Features:
        """Concatenate shard parts into one row-aligned Features (empty, with the right shapes, if none)."""
        if not parts:
            empty = np.zeros(0, object)
            a_shape, v_shape = (self.audio_shape[1:], self.video_shape[1:]) if pooled else (
                self.audio_shape, self.video_shape)
            return Features(empty, empty, np.zeros((0, *a_shape), np.float16), np.zeros(0, bool),
                            np.zeros((0, *v_shape), np.float16), np.zeros(0, bool),
                            np.zeros(0, np.float32), empty, empty, empty, empty)
        return Features(
            keys=np.concatenate([p.keys for p in parts]),
            paths=np.array([q for p in parts for q in p.paths], dtype=object),
            audio=np.concatenate([p.audio for p in parts]),
            audio_mask=np.concatenate([p.audio_mask for p in parts]),
            video=np.concatenate([p.video for p in parts]),
            video_mask=np.concatenate([p.video_mask for p in parts]),
            duration=np.concatenate([p.duration for p in parts]),
            ids=np.concatenate([p.meta["id"] for p in parts]),
            music_ids=np.concatenate([p.meta["music_id"] for p in parts]),
            splits=np.concatenate([p.meta["split"] for p in parts]),
            shard_of=np.concatenate(names),
        )

    def load_windows(self, keys=None) -> Windows:
        """Every committed item's ragged audio windows (or only those with `keys`), one entry per key
        (a key cached twice keeps its first copy). Items of shards written without windows have none."""
        if keys is None:
            selection = []
            seen: set[str] = set()
            for path in self.shard_paths():
                try:
                    shard_keys = read_keys(path)
                except DamagedShard as err:
                    self.quarantine(path, str(err))
                    continue
                rows = [i for i, k in enumerate(shard_keys) if not (k in seen or seen.add(k))]
                if rows:
                    selection.append((path, np.asarray(rows, np.int64)))
        else:
            selection = [(path, rows) for path, rows, _ in self._rows_by_shard(keys)]
        dim = self.audio_shape[1]
        keys_out, paths, durations, counts, starts, audio = [], [], [], [], [], []
        for path, rows in selection:
            try:
                win: WindowData = read_windows(path, rows)
                meta = read_rows(path, rows)
            except DamagedShard as err:
                self.quarantine(path, str(err))
                continue
            keys_out.append(win.keys)
            paths.extend(meta.paths)
            durations.append(meta.duration)
            counts.append(np.diff(win.offsets))
            starts.append(win.starts)
            audio.append(win.audio)
        n_counts = np.concatenate(counts) if counts else np.zeros(0, np.int64)
        offsets = np.zeros(len(n_counts) + 1, np.int64)
        np.cumsum(n_counts, out=offsets[1:])
        return Windows(
            keys=np.concatenate(keys_out) if keys_out else np.zeros(0, object),
            paths=np.array(paths, dtype=object),
            duration=np.concatenate(durations) if durations else np.zeros(0, np.float32),
            offsets=offsets,
            starts=np.concatenate(starts) if starts else np.zeros(0, np.float32),
            audio=np.concatenate(audio) if audio else np.zeros((0, dim), np.float16),
        )

    # -- failures -------------------------------------------------------------------------
    def record_failure(self, path: str, reason: str, key: str = "") -> None:
        """Append one line; a single O_APPEND write, so concurrent workers don't interleave."""
        self._append({"path": _display(path), "raw_path": _raw(path), "key": key,
                      "reason": reason.splitlines()[0] if reason else "unknown error"})

    def record_resolved(self, path: str, key: str) -> None:
        """A previously failed path was extracted after all (e.g. by --retry-failed)."""
        self._append({"path": _display(path), "raw_path": _raw(path), "key": key, "resolved": True})

    def _append(self, record: dict) -> None:
        record["time"] = round(time.time(), 3)
        line = json.dumps(record, ensure_ascii=True) + "\n"
        fd = os.open(self.failure_log, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            size = os.fstat(fd).st_size
            if size and os.pread(fd, 1, size - 1) != b"\n":
                line = "\n" + line  # the last line was torn by a crash: don't glue onto it
            os.write(fd, line.encode())
        finally:
            os.close(fd)

    def failures(self) -> list[Failure]:
        """The latest failure of each path that has not been resolved since."""
        if not self.failure_log.exists():
            return []
        latest: dict[str, Failure] = {}
        for line in self.failure_log.read_text().splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue  # a line torn by a crash: ignore it
            path = os.fsdecode(bytes.fromhex(rec["raw_path"])) if rec.get("raw_path") else rec["path"]
            if rec.get("resolved"):
                latest.pop(path, None)
            else:
                latest[path] = Failure(path, rec.get("reason", ""), rec.get("key", ""), rec.get("time", 0.0))
        return list(latest.values())

    # -- locking --------------------------------------------------------------------------
    @contextlib.contextmanager
    def lock(self, partition: int, num_partitions: int) -> Iterator[None]:
        """Exclusive lock for one partition; workers on different partitions run side by side."""
        lock_dir = self.root / "locks"
        lock_dir.mkdir(exist_ok=True)
        path = lock_dir / f"partition-{partition}-of-{num_partitions}.lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 200, 0).decode(errors="replace").strip()
                raise CacheError(
                    f"{path}: another extract is writing partition {partition} of {num_partitions} "
                    f"({holder or 'pid unknown'}); wait for it or use a different --shard-index"
                ) from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()} on {os.uname().nodename}\n".encode(), 0)
            yield
        finally:
            os.close(fd)  # closing releases the flock; the kernel also releases it if we are killed

    # -- summary --------------------------------------------------------------------------
    def info(self) -> dict:
        """Counts that are true: unique keys (a key in two shards counts once), how many rows are
        duplicates, and which shards could not be read (named, never silently skipped)."""
        import h5py

        shards = self.shard_paths()
        seen: set[str] = set()
        rows = with_audio = 0
        damaged: list[str] = []
        for path in shards:
            try:
                with h5py.File(path, "r") as f:
                    keys = f["key"].asstr()[:]
                    mask = f["audio_mask"][:].astype(bool)
            except Exception as err:  # noqa: BLE001 - info reports a damaged shard instead of crashing
                damaged.append(f"{path.name}: {_reason(err)}")
                continue
            rows += len(keys)
            for key, has_audio in zip(keys, mask):
                if key not in seen:
                    seen.add(key)
                    with_audio += bool(has_audio)
        size = sum(p.stat().st_size for p in self.root.rglob("*") if p.is_file())
        return {
            "fingerprint": self.fingerprint,
            "path": str(self.root),
            "created": self.created,
            "shards": len(shards),
            "items": len(seen),
            "duplicate_rows": rows - len(seen),
            "items_without_audio": len(seen) - with_audio,
            "damaged_shards": damaged,
            "failures": len(self.failures()),
            "bytes": size,
            "settings": self.settings,
            "note": self.note,
        }


def verify_namespace(ns: Namespace) -> dict:
    """Read every byte of every shard (checksums included) and report: damaged shards (named, with
    the reason; left in place), duplicate keys across shards, and the true count of unique items."""
    seen: dict[str, str] = {}
    damaged: list[dict] = []
    duplicates = rows = 0
    for path in ns.shard_paths():
        try:
            data = read_shard(path)  # every dataset, so a bad checksum anywhere shows
            read_windows(path)
        except DamagedShard as err:
            damaged.append({"shard": path.name, "reason": str(err)})
            continue
        rows += len(data)
        for key in data.keys.astype(str):
            if key in seen:
                duplicates += 1
            else:
                seen[key] = path.name
    return {"fingerprint": ns.fingerprint, "path": str(ns.root), "shards": len(ns.shard_paths()),
            "items": len(seen), "rows": rows, "duplicate_rows": duplicates, "damaged": damaged}


class KeyIndex:
    """Where each committed key lives, for looking items up while other jobs keep writing.

    `refresh()` lists the shard directory and reads the keys of shards it has not seen (shards are
    immutable once committed), so a long-lived reader (a `Recommender`, a server) costs one
    directory listing per miss instead of re-reading every shard's keys per query.
    """

    def __init__(self, ns: Namespace):
        self.ns = ns
        self._seen: set[str] = set()
        self._where: dict[str, tuple[Path, int]] = {}

    def refresh(self) -> int:
        """Index shards committed since the last refresh; returns how many were new."""
        new = 0
        for path in self.ns.shard_paths():
            if path.name in self._seen:
                continue
            try:
                keys = read_keys(path)
            except DamagedShard as err:
                self.ns.quarantine(path, str(err))
                continue
            self._seen.add(path.name)
            new += 1
            for row, key in enumerate(keys):
                self._where.setdefault(key, (path, row))  # the first copy wins, as in load()
        return new

    def __contains__(self, key: str) -> bool:
        return key in self._where

    def read(self, key: str) -> ShardData | None:
        """The item's row (a one-row ShardData), refreshing once on a miss; None if not committed."""
        if key not in self._where:
            self.refresh()
        if key not in self._where:
            return None
        path, row = self._where[key]
        try:
            return read_rows(path, np.array([row]))
        except DamagedShard as err:
            self.ns.quarantine(path, str(err))
            self._where.pop(key, None)
            return None


def _take(data: ShardData, rows: np.ndarray) -> ShardData:
    """Some rows of a shard's data."""
    return ShardData(keys=data.keys[rows], paths=[data.paths[i] for i in rows], audio=data.audio[rows],
                     audio_mask=data.audio_mask[rows], video=data.video[rows], video_mask=data.video_mask[rows],
                     duration=data.duration[rows], meta={k: v[rows] for k, v in data.meta.items()})


def _shard_prefix(partition: int, num_partitions: int) -> str:
    return f"p{partition:05d}of{num_partitions:05d}"


def _raw(path: str) -> str:
    return os.fsencode(path).hex()


def _display(path: str) -> str:
    return os.fsencode(path).decode("utf-8", "backslashreplace")


class FeatureCache:
    """The cache root: a directory of namespaces."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def namespaces(self) -> list[Namespace]:
        if not self.root.exists():
            return []
        out = []
        for d in sorted(self.root.iterdir()):
            if (d / "settings.json").exists():
                try:
                    out.append(Namespace(d))
                except CacheError as err:
                    log.warning("%s", err)
        return out

    def create(self, settings: dict, note: dict | None = None) -> Namespace:
        """The namespace for these extractor settings, created on first use. `note` is written beside the
        settings by the creator only and is not part of the fingerprint (e.g. where imported features came from)."""
        fp = fingerprint(settings)
        root = self.root / fp[:16]
        meta_path = root / "settings.json"
        if not meta_path.exists():
            root.mkdir(parents=True, exist_ok=True)
            tmp = root / f".settings-{uuid.uuid4().hex[:8]}.json"
            meta = {"fingerprint": fp, "created": time.time(), "settings": settings, **({"note": note} if note else {})}
            try:
                tmp.write_text(json.dumps(meta, indent=2))
                os.link(tmp, meta_path)  # atomic create-if-absent: concurrent creators agree
            except FileExistsError:
                pass
            except OSError as err:
                raise OSError(err.errno, err.strerror, str(meta_path)) from err  # name the file
            finally:
                tmp.unlink(missing_ok=True)  # never a partial settings file left behind (e.g. disk full)
        ns = Namespace(root)
        if ns.fingerprint != fp:
            raise CacheError(f"{meta_path}: fingerprint {ns.fingerprint[:16]}… does not match its directory; "
                             "move the directory aside")
        return ns

    def find(self, prefix: str) -> Namespace:
        """The namespace whose fingerprint starts with `prefix`."""
        found = [ns for ns in self.namespaces() if ns.fingerprint.startswith(prefix)]
        if len(found) == 1:
            return found[0]
        known = ", ".join(ns.fingerprint[:16] for ns in self.namespaces()) or "none"
        if not found:
            raise CacheError(f"no cache namespace matches '{prefix}' in {self.root} (namespaces: {known}); "
                             "run `mvbind extract` first or check paths.cache")
        raise CacheError(f"'{prefix}' matches {len(found)} namespaces in {self.root}; give more digits ({known})")

    def get(self, settings: dict) -> Namespace:
        """The existing namespace for these settings, or a one-line error saying how to make it."""
        fp = fingerprint(settings)
        root = self.root / fp[:16]
        if not (root / "settings.json").exists():
            raise CacheError(f"no cache namespace for these extractor settings ({fp[:16]}) in {self.root}; "
                             "run `mvbind extract` with the same settings first")
        return Namespace(root)
