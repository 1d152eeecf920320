"""Features from elsewhere: a file of pre-extracted per-item features (npz, HDF5 or Parquet), checked
against one schema, as cache rows and namespace settings.

The schema (every array has one row per item, n ≥ 1):

    ids          (n,)                     str (or integers): unique item ids
    audio        (n, d_a) or (n, c_a, d_a)  numbers: pooled, or one vector per clip
    video        (n, d_v) or (n, c_v, d_v)  numbers (d_v may differ from d_a: the projector has a head each)
    music_id     (n,)  optional           str: items sharing a non-empty music_id share a track ("" = unknown)
    split        (n,)  optional           str in {train, val, test}: used as given (else a hash split)
    audio_mask   (n,)  optional           bool: false = the item has no audio (its row is ignored)
    video_mask   (n,)  optional           bool: false = the item has no video

npz (`np.savez`, strings as str arrays, not object arrays) and HDF5 (datasets at the top level) are
always read; Parquet (columns of those names, per-clip arrays as lists of lists) needs pyarrow, which
mvbind does not install (`pip install pyarrow`). Every mistake is one line naming the file and the key.
Embeddings are stored as float16, like every cache namespace; values beyond its range are refused.
"""

from __future__ import annotations

import hashlib
import importlib.util
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mvbind.cache.keys import KEY_HEX
from mvbind.cache.shards import Row
from mvbind.errors import MvbindError

SCHEMA = 1  # of the import (part of the fingerprint): bump when the conversion changes stored values
REQUIRED = ("ids", "audio", "video")
OPTIONAL = ("music_id", "split", "audio_mask", "video_mask")
SPLITS = ("train", "val", "test")
F16_MAX = float(np.finfo(np.float16).max)
MAGIC = {b"PK\x03\x04": "npz", b"\x89HDF\r\n\x1a\n": "hdf5", b"PAR1": "parquet"}
SCHEMA_HINT = "see the feature-file schema in README.md (Features from elsewhere)"


class FeatureFileError(MvbindError):
    """A feature file that does not follow the schema."""


@dataclass
class FeatureFile:
    """A checked feature file: strings and masks in memory, the embeddings as array-likes (HDF5 datasets
    stay on disk and are read in row blocks)."""

    path: Path
    format: str
    sha256: str
    ids: np.ndarray  # (n,) str
    audio: object  # (n, d) or (n, c, d): numpy array or h5py dataset
    video: object
    music_id: np.ndarray  # (n,) str, "" = unknown
    split: np.ndarray  # (n,) str, "" = none
    audio_mask: np.ndarray  # (n,) bool
    video_mask: np.ndarray
    ignored: list[str]  # keys in the file that are not in the schema
    _handle: object = None  # an open h5py.File, closed by close()

    def __len__(self) -> int:
        return len(self.ids)

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def clip_shape(self, modality: str) -> tuple[int, int]:
        """(clips, dim) as stored in the cache: a pooled (n, d) array is one clip."""
        shape = getattr(self, modality).shape
        return (1, int(shape[1])) if len(shape) == 2 else (int(shape[1]), int(shape[2]))

    def keys(self) -> np.ndarray:
        """Cache keys: the first 128 bits of sha256 of each id, so an id keeps its key (and its hash split
        and music group) whatever file, order or name it is imported from."""
        return np.array([hashlib.sha256(f"id:{i}".encode()).hexdigest()[:KEY_HEX] for i in self.ids], dtype=object)

    def blocks(self, rows: int) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """(start, audio, video) in blocks of `rows` items, as float16 (n, clips, dim), finite where present."""
        for start in range(0, len(self), rows):
            stop = min(len(self), start + rows)
            out = []
            for name in ("audio", "video"):
                block = np.asarray(getattr(self, name)[start:stop])
                block = block[:, None, :] if block.ndim == 2 else block
                with np.errstate(over="ignore"):  # an overflow becomes inf, refused just below
                    f16 = block.astype(np.float16)
                mask = getattr(self, f"{name}_mask")[start:stop]
                bad = ~np.isfinite(f16).reshape(len(f16), -1).all(axis=1) & mask
                if bad.any():
                    j = int(np.flatnonzero(bad)[0])
                    what = ("nan or inf" if not np.isfinite(block[j]).all() else
                            f"values beyond float16's range (±{F16_MAX:g}); scale them")
                    raise FeatureFileError(f"{self.path}: '{name}' row {start + j} (id {self.ids[start + j]!r}) has "
                                           f"{what}; mark a missing {name} with '{name}_mask' instead")
                out.append(f16)
            yield start, out[0], out[1]

    def rows(self, start: int, audio: np.ndarray, video: np.ndarray, keys: np.ndarray) -> list[Row]:
        """Cache rows for one block from `blocks` (no media path: the items exist only as features)."""
        return [Row(key=str(keys[i]), path="", audio=audio[j] if self.audio_mask[i] else None,
                    video=video[j] if self.video_mask[i] else None, duration=0.0, id=str(self.ids[i]),
                    music_id=str(self.music_id[i]), split=str(self.split[i]))
                for j, i in enumerate(range(start, start + len(audio)))]

    def settings(self, name: str) -> dict:
        """Namespace settings: the file's content hash and the import name make the fingerprint."""
        return {"encoder": {"name": "imported", "source": name},
                "imported": {"schema": SCHEMA, "name": name, "sha256": self.sha256, "format": self.format,
                             "items": len(self), "audio": list(self.audio.shape), "video": list(self.video.shape)},
                "shapes": {"audio": list(self.clip_shape("audio")), "video": list(self.clip_shape("video"))}}


def file_sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def open_feature_file(path: str | Path) -> FeatureFile:
    """Read and check a feature file's layout (shapes, types, ids, splits, masks); the embeddings' values
    are checked block by block as `FeatureFile.blocks` reads them."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError as err:
        raise FeatureFileError(f"{path}: {err.strerror or err}; give a feature file (.npz, .h5 or .parquet)") from None
    fmt = next((name for magic, name in MAGIC.items() if head.startswith(magic)), None)
    if fmt is None:
        raise FeatureFileError(f"{path}: not an npz, HDF5 or Parquet file; {SCHEMA_HINT}")
    sha = file_sha256(path)
    handle = None
    if fmt == "npz":
        arrays, keys = _npz(path)
    elif fmt == "hdf5":
        handle, arrays, keys = _hdf5(path)
    else:
        arrays, keys = _parquet(path)
    try:
        return _check(path, fmt, sha, arrays, keys, handle)
    except BaseException:
        if handle is not None:
            handle.close()
        raise


def _check(path: Path, fmt: str, sha: str, arrays: dict, keys: list[str], handle) -> FeatureFile:
    for key in REQUIRED:
        if key not in arrays:
            raise FeatureFileError(f"{path}: no '{key}' array (found: {', '.join(keys) or 'nothing'}); a feature "
                                   f"file needs ids, audio and video; {SCHEMA_HINT}")
    ids = _strings(path, "ids", arrays["ids"], numbers=True)
    n = len(ids)
    if n == 0:
        raise FeatureFileError(f"{path}: 'ids' is empty; nothing to import")
    for key in (*REQUIRED, *OPTIONAL):
        if key in arrays and (len(arrays[key].shape) == 0 or arrays[key].shape[0] != n):
            rows = arrays[key].shape[0] if len(arrays[key].shape) else "no"
            raise FeatureFileError(f"{path}: '{key}' has {rows} rows, 'ids' has {n}; every array needs one row per id")
    uniq, counts = np.unique(ids, return_counts=True)
    if (counts > 1).any():
        raise FeatureFileError(f"{path}: 'ids' repeats {uniq[counts > 1][0]!r} ({int((counts > 1).sum())} ids occur "
                               "more than once); ids must be unique")
    for key in ("audio", "video"):
        arr = arrays[key]
        if len(arr.shape) not in (2, 3) or min(arr.shape[1:]) < 1:
            raise FeatureFileError(f"{path}: '{key}' has shape {tuple(arr.shape)}; expected (n, dim) pooled or "
                                   "(n, clips, dim) per clip")
        if np.dtype(arr.dtype).kind not in "fiu":
            raise FeatureFileError(f"{path}: '{key}' holds {np.dtype(arr.dtype)}, not numbers; "
                                   "store float32 or float16")
    none = np.full(n, "", dtype=object)
    split = _strings(path, "split", arrays["split"]) if "split" in arrays else none
    split = np.array([s.strip().lower() for s in split], dtype=object)
    bad = ~np.isin(split, SPLITS)
    if "split" in arrays and bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise FeatureFileError(f"{path}: 'split' row {i} (id {ids[i]!r}) is {split[i]!r}; use train, val or test "
                               "for every item, or leave 'split' out for a hash split")
    music = _strings(path, "music_id", arrays["music_id"], numbers=True) if "music_id" in arrays else none
    masks = {key: _mask(path, key, arrays[key]) if key in arrays else np.ones(n, bool)
             for key in ("audio_mask", "video_mask")}
    ignored = [k for k in keys if k not in (*REQUIRED, *OPTIONAL)]
    return FeatureFile(path=path, format=fmt, sha256=sha, ids=ids, audio=arrays["audio"], video=arrays["video"],
                       music_id=music, split=split, ignored=ignored, _handle=handle, **masks)


def _strings(path: Path, key: str, arr, numbers: bool = False) -> np.ndarray:
    """A (n,) column of strings from str, bytes (UTF-8) or, for ids, integers."""
    values = _whole(arr)
    if values.ndim != 1:
        raise FeatureFileError(f"{path}: '{key}' has shape {values.shape}; expected (n,) strings")
    kind = values.dtype.kind
    if kind == "U" or (kind == "O" and all(isinstance(v, str) for v in values)):
        return values.astype(str).astype(object)
    if kind == "S" or (kind == "O" and all(isinstance(v, bytes) for v in values)):
        try:
            return np.array([v.decode() for v in values], dtype=object)
        except UnicodeDecodeError:
            raise FeatureFileError(f"{path}: '{key}' holds bytes that are not UTF-8 text") from None
    if numbers and kind in "iu":
        return values.astype(str).astype(object)
    raise FeatureFileError(f"{path}: '{key}' holds {values.dtype}, not strings; store str values")


def _whole(arr) -> np.ndarray:
    """A numpy array, or an h5py dataset read in full (strings decoded)."""
    if isinstance(arr, np.ndarray):
        return arr
    import h5py

    return arr.asstr()[()] if h5py.check_string_dtype(arr.dtype) is not None else arr[()]


def _mask(path: Path, key: str, arr) -> np.ndarray:
    values = _whole(arr)
    if values.ndim != 1 or values.dtype.kind not in "biu" or not np.isin(values, (0, 1)).all():
        raise FeatureFileError(f"{path}: '{key}' must be (n,) booleans (true = present), got {values.dtype} "
                               f"{values.shape}")
    return values.astype(bool)


def _npz(path: Path) -> tuple[dict, list[str]]:
    key = "?"
    try:
        npz = np.load(path, allow_pickle=False)
        keys = list(npz.files)
        arrays = {}
        for key in keys:
            if key in (*REQUIRED, *OPTIONAL):
                arrays[key] = npz[key]
    except ValueError as err:
        if "allow_pickle" in str(err):
            raise FeatureFileError(f"{path}: '{key}' is a Python object array, which npz can't load safely; save "
                                   f"it as a str array (np.asarray(values, dtype=str))") from None
        raise FeatureFileError(f"{path}: unreadable npz ({err})") from None
    except (OSError, EOFError) as err:
        raise FeatureFileError(f"{path}: unreadable npz ({err})") from None
    return arrays, keys


def _hdf5(path: Path):
    import h5py

    try:
        f = h5py.File(path, "r")
    except OSError as err:
        raise FeatureFileError(f"{path}: unreadable HDF5 ({err})") from None
    keys = list(f.keys())
    arrays = {}
    for key in keys:
        if key in (*REQUIRED, *OPTIONAL):
            if not isinstance(f[key], h5py.Dataset):
                f.close()
                raise FeatureFileError(f"{path}: '{key}' is an HDF5 group; it must be a dataset at the top level")
            arrays[key] = f[key]
    return f, arrays, keys


def _parquet(path: Path) -> tuple[dict, list[str]]:
    if importlib.util.find_spec("pyarrow") is None:
        raise FeatureFileError(f"{path}: reading Parquet needs pyarrow, which is not installed (pip install pyarrow); "
                               "or save the features as .npz or HDF5")
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as err:  # noqa: BLE001 - pyarrow raises several types for a damaged file
        raise FeatureFileError(f"{path}: unreadable Parquet ({' '.join(str(err).split())[:160]})") from None
    keys = list(table.column_names)
    return {k: _column(path, k, table.column(k)) for k in keys if k in (*REQUIRED, *OPTIONAL)}, keys


def _column(path: Path, key: str, column) -> np.ndarray:
    """A Parquet column as a numpy array: lists (of lists) of numbers become (n, d) or (n, c, d)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    arr = column.combine_chunks()
    if arr.null_count:
        raise FeatureFileError(f"{path}: '{key}' has {arr.null_count} null values; every row needs a value")
    shape = [len(arr)]
    while pa.types.is_list(arr.type) or pa.types.is_large_list(arr.type) or pa.types.is_fixed_size_list(arr.type):
        lengths = pc.list_value_length(arr).to_numpy(zero_copy_only=False)
        if len(lengths) and (lengths != lengths[0]).any():
            raise FeatureFileError(f"{path}: '{key}' has rows of different lengths ({lengths.min()} to "
                                   f"{lengths.max()}); every row needs the same shape")
        shape.append(int(lengths[0]) if len(lengths) else 0)
        arr = arr.flatten()
    values = arr.to_numpy(zero_copy_only=False)
    return values.reshape(shape) if len(shape) > 1 else values
