"""One HDF5 shard: row-aligned keys, paths, per-clip fp16 embeddings, masks and metadata.

A shard is written under a temporary name and renamed into place, so it is either whole or
absent. `read_shard` checks the layout and raises `DamagedShard` with the reason.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

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
            f.create_dataset("audio", data=audio, chunks=True if n else None)
            f.create_dataset("video", data=video, chunks=True if n else None)
            f.create_dataset("audio_mask", data=audio_mask)
            f.create_dataset("video_mask", data=video_mask)
            f.create_dataset("duration", data=np.array([r.duration for r in rows], np.float32))
            for field in META_FIELDS:
                f.create_dataset(field, data=[getattr(r, field) or "" for r in rows], dtype=STR)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, final)
        _fsync_dir(directory)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return final


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
    except Exception as err:  # h5py raises OSError/KeyError/ValueError for damaged files
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
    except Exception as err:
        raise DamagedShard(_reason(err)) from None
    if len(data.keys) != n:
        raise DamagedShard(f"holds {len(data.keys)} rows, header says {n}")
    return data


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
    text = str(err).splitlines()[0] if str(err) else type(err).__name__
    return f"unreadable HDF5 ({text})"
