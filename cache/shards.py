"""One HDF5 shard: row-aligned keys, paths, per-clip fp16 embeddings, masks and metadata.

A shard is written under a temporary name and renamed into place, so it is either whole or
absent. `read_shard` checks the layout and raises `DamagedShard` with the reason.

Optional ragged windows (music library namespaces): an item may also carry a variable number of
audio windows, stored flat in the same file: ``win_audio`` (total_windows, dim) fp16,
``win_start`` (total_windows,) float32 seconds and ``win_offsets`` (n + 1,) int64, so item i's
windows are rows ``win_offsets[i]:win_offsets[i + 1]``. Shards without them read as before
(`read_windows` gives every item zero windows); the schema version is unchanged.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from mvbind.errors import errno_of, reason

SCHEMA_VERSION = 1
TMP_PREFIX = ".tmp-"
STR = h5py.string_dtype()  # utf-8
BYTES = h5py.string_dtype("ascii")  # raw bytes: file names need not be UTF-8
META_FIELDS = ("id", "music_id", "split")


class DamagedShard(Exception):
    """A shard file that can't be read or is inconsistent; str() is the reason."""


@dataclass
class Row:
    """One extracted item, as the extractor hands it to the writer."""

    key: str
    path: str
    audio: np.ndarray | None  # (audio_clips, dim) or None when the file has no audio
    video: np.ndarray | None  # (video_clips, dim) or None when the file has no video
    duration: float
    id: str = ""
    music_id: str = ""
    split: str = ""
    windows: np.ndarray | None = None  # (n_windows, dim): ragged per-item audio windows (libraries)
    window_starts: np.ndarray | None = None  # (n_windows,) seconds into the file


@dataclass
class WindowData:
    """A shard's ragged windows: item i's are rows offsets[i]:offsets[i + 1]."""

    keys: np.ndarray  # (n,) str
    offsets: np.ndarray  # (n + 1,) int64
    starts: np.ndarray  # (total,) float32
    audio: np.ndarray  # (total, dim) float16


@dataclass
class ShardData:
    keys: np.ndarray  # (n,) str
    paths: list[str]
    audio: np.ndarray  # (n, audio_clips, dim) float16
    audio_mask: np.ndarray  # (n,) bool
    video: np.ndarray  # (n, video_clips, dim) float16
    video_mask: np.ndarray  # (n,) bool
    duration: np.ndarray  # (n,) float32
    meta: dict[str, np.ndarray]  # id, music_id, split: (n,) str ("" when absent)

    def __len__(self) -> int:
        return len(self.keys)


def write_shard(
    directory: Path,
    name: str,
    rows: list[Row],
    *,
    audio_shape: tuple[int, int],
    video_shape: tuple[int, int],
    attrs: dict,
) -> Path:
    """Write rows to `directory/name` atomically (temp file, fsync, rename). Never overwrites."""
    final = directory / name
    if final.exists():
        raise FileExistsError(f"{final}: shard already exists; refusing to overwrite cached data")
    tmp = directory / f"{TMP_PREFIX}{uuid.uuid4().hex[:8]}-{name}"
    n = len(rows)
    audio = np.zeros((n, *audio_shape), np.float16)
    video = np.zeros((n, *video_shape), np.float16)
    audio_mask = np.zeros(n, bool)
    video_mask = np.zeros(n, bool)
    for i, row in enumerate(rows):
        if row.audio is not None:
            audio[i] = row.audio
            audio_mask[i] = True
        if row.video is not None:
            video[i] = row.video
            video_mask[i] = True
    try:
        with h5py.File(tmp, "w") as f:
            f.attrs["schema"] = SCHEMA_VERSION
            f.attrs["n_items"] = n
            for k, v in attrs.items():
                f.attrs[k] = v
            f.create_dataset("key", data=[r.key for r in rows], dtype=STR)
            f.create_dataset("path", data=np.array([os.fsencode(r.path) for r in rows], dtype=object), dtype=BYTES)
            # HDF5's per-chunk Fletcher-32 checksum on the embeddings: a flipped byte is a read error
            # (the shard is quarantined and its items re-extracted), not a silently wrong vector.
            f.create_dataset("audio", data=audio, chunks=True if n else None, fletcher32=bool(n))
            f.create_dataset("video", data=video, chunks=True if n else None, fletcher32=bool(n))
            f.create_dataset("audio_mask", data=audio_mask)
            f.create_dataset("video_mask", data=video_mask)
            f.create_dataset("duration", data=np.array([r.duration for r in rows], np.float32))
            for field in META_FIELDS:
                f.create_dataset(field, data=[getattr(r, field) or "" for r in rows], dtype=STR)
            if any(r.windows is not None for r in rows):
                _write_windows(f, rows, audio_shape[1])
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, final)
        _fsync_dir(directory)
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        code = errno_of(err)
        if code is not None and not getattr(err, "filename", None):  # h5py hides errno in RuntimeError text
            raise OSError(code, os.strerror(code), str(final)) from err
        raise
    return final


def _write_windows(f: h5py.File, rows: list[Row], dim: int) -> None:
    counts = [0 if r.windows is None else len(r.windows) for r in rows]
    offsets = np.zeros(len(rows) + 1, np.int64)
    np.cumsum(counts, out=offsets[1:])
    total = int(offsets[-1])
    audio = np.zeros((total, dim), np.float16)
    starts = np.zeros(total, np.float32)
    for r, lo, hi in zip(rows, offsets[:-1], offsets[1:]):
        if r.windows is not None and hi > lo:
            if r.window_starts is None or len(r.window_starts) != hi - lo:
                raise ValueError(f"{r.path}: {hi - lo} windows but "
                                 f"{0 if r.window_starts is None else len(r.window_starts)} window starts")
            audio[lo:hi] = r.windows
            starts[lo:hi] = r.window_starts
    f.create_dataset("win_audio", data=audio, chunks=True if total else None, fletcher32=bool(total))
    f.create_dataset("win_start", data=starts)
    f.create_dataset("win_offsets", data=offsets)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_keys(path: Path) -> list[str]:
    """Just the keys of a shard (cheap: resume needs only these)."""
    try:
        with h5py.File(path, "r") as f:
            _check_layout(f)
            return list(f["key"].asstr()[:])
    except DamagedShard:
        raise
    except Exception as err:  # noqa: BLE001 - h5py raises OSError/KeyError/ValueError/... for damaged files
        raise DamagedShard(_reason(err)) from None


@dataclass
class Catalog:
    """What a shard holds, without the embeddings: enough to list and look up its items."""

    keys: list[str]
    paths: list[str]
    video_mask: np.ndarray  # (n,) bool
    audio_mask: np.ndarray  # (n,) bool
    duration: np.ndarray  # (n,) float32


def read_catalog(path: Path) -> Catalog:
    """Keys, source paths, masks and durations of a shard (a few KB read, no embeddings)."""
    try:
        with h5py.File(path, "r") as f:
            _check_layout(f)
            return Catalog(keys=list(f["key"].asstr()[:]), paths=[os.fsdecode(p) for p in f["path"][:]],
                           video_mask=f["video_mask"][:].astype(bool), audio_mask=f["audio_mask"][:].astype(bool),
                           duration=f["duration"][:].astype(np.float32))
    except DamagedShard:
        raise
    except Exception as err:  # noqa: BLE001 - h5py raises OSError/KeyError/ValueError/... for damaged files
        raise DamagedShard(_reason(err)) from None


def read_shard(path: Path) -> ShardData:
    """Everything in a shard, checked for consistent row counts."""
    try:
        with h5py.File(path, "r") as f:
            n = _check_layout(f)
            data = ShardData(
                keys=f["key"].asstr()[:].astype(object),
                paths=[os.fsdecode(p) for p in f["path"][:]],
                audio=f["audio"][:],
                audio_mask=f["audio_mask"][:].astype(bool),
                video=f["video"][:],
                video_mask=f["video_mask"][:].astype(bool),
                duration=f["duration"][:],
                meta={k: f[k].asstr()[:].astype(object) for k in META_FIELDS},
            )
    except DamagedShard:
        raise
    except Exception as err:  # noqa: BLE001 - any failure to read means a damaged shard
        raise DamagedShard(_reason(err)) from None
    if len(data.keys) != n:
        raise DamagedShard(f"holds {len(data.keys)} rows, header says {n}")
    return data


def read_windows(path: Path, rows: np.ndarray | None = None) -> WindowData:
    """The ragged windows of a shard (of the given row indices only, when `rows` is given).

    A shard written without windows gives every item zero windows. Inconsistent offsets raise
    `DamagedShard`.
    """
    try:
        with h5py.File(path, "r") as f:
            n = _check_layout(f)
            keys = f["key"].asstr()[:].astype(object)
            sel = np.arange(n) if rows is None else np.asarray(rows, np.int64)
            if "win_offsets" not in f:
                dim = int(f["audio"].shape[-1])
                return WindowData(keys[sel], np.zeros(len(sel) + 1, np.int64), np.zeros(0, np.float32),
                                  np.zeros((0, dim), np.float16))
            offsets = f["win_offsets"][:].astype(np.int64)
            total = f["win_audio"].shape[0]
            if (len(offsets) != n + 1 or offsets[0] != 0 or offsets[-1] != total
                    or f["win_start"].shape[0] != total or np.any(np.diff(offsets) < 0)):
                raise DamagedShard(f"window datasets are inconsistent ({len(offsets)} offsets for {n} items, "
                                   f"{total} windows)")
            if rows is None:
                return WindowData(keys, offsets, f["win_start"][:], f["win_audio"][:])
            counts = offsets[sel + 1] - offsets[sel]
            new_offsets = np.zeros(len(sel) + 1, np.int64)
            np.cumsum(counts, out=new_offsets[1:])
            parts = [(int(offsets[i]), int(offsets[i + 1])) for i in sel]
            audio = np.concatenate([f["win_audio"][a:b] for a, b in parts]) if parts else np.zeros(
                (0, f["win_audio"].shape[1]), np.float16)
            starts = np.concatenate([f["win_start"][a:b] for a, b in parts]) if parts else np.zeros(0, np.float32)
            return WindowData(keys[sel], new_offsets, starts, audio)
    except DamagedShard:
        raise
    except Exception as err:  # noqa: BLE001 - any failure to read means a damaged shard
        raise DamagedShard(_reason(err)) from None


def read_rows(path: Path, rows: np.ndarray) -> ShardData:
    """Only the given rows (sorted, unique indices) of a shard: for looking items up by key."""
    rows = np.asarray(rows, np.int64)
    try:
        with h5py.File(path, "r") as f:
            _check_layout(f)
            take = list(rows)

            def part(name):
                return f[name][take] if take else f[name][:0]

            return ShardData(
                keys=f["key"].asstr()[:].astype(object)[rows],
                paths=[os.fsdecode(p) for p in part("path")],
                audio=part("audio"),
                audio_mask=part("audio_mask").astype(bool),
                video=part("video"),
                video_mask=part("video_mask").astype(bool),
                duration=part("duration"),
                meta={k: f[k].asstr()[:].astype(object)[rows] for k in META_FIELDS},
            )
    except DamagedShard:
        raise
    except Exception as err:  # noqa: BLE001 - any failure to read means a damaged shard
        raise DamagedShard(_reason(err)) from None


def _check_layout(f: h5py.File) -> int:
    schema = int(f.attrs.get("schema", -1))
    if schema != SCHEMA_VERSION:
        raise DamagedShard(f"schema {schema}, this mvbind reads schema {SCHEMA_VERSION}")
    n = int(f.attrs["n_items"])
    for name in ("key", "path", "audio", "video", "audio_mask", "video_mask", "duration", *META_FIELDS):
        if name not in f:
            raise DamagedShard(f"dataset '{name}' is missing")
        if f[name].shape[0] != n:
            raise DamagedShard(f"dataset '{name}' has {f[name].shape[0]} rows, expected {n}")
    return n


def _reason(err: Exception) -> str:
    text = reason(err)
    if "filter returned failure" in text or "fletcher32" in text.lower():
        return "checksum mismatch in the embeddings (damaged bytes); its items will be extracted again"
    return f"unreadable HDF5 ({text})"
