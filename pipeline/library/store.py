"""A music library file: per-window track vectors in one space with the videos, and their search.

One HDF5 file (``*.mvlib.h5``), written to a temporary name, fsynced and renamed into place::

    attrs   format = "mvbind-library", version = 1, meta = JSON: encoder fingerprint (the video
            namespace the library is compatible with), track namespace, encoder description, the
            projector ({"kind": "run", run, checkpoint sha256, spec} or {"kind": "zero-shot"}),
            window layout, counts, FAISS build report
    tracks/ key (T,) content key · path (T,) raw bytes · title, artist (T,) str ("" = no tag) ·
            duration (T,) float32 s · window_offsets (T + 1,) int64 (track t = windows
            offsets[t]:offsets[t + 1], at least one each)
    windows/ start (W,) float32 s into the track · vectors (W, E) float16, projected and L2-normalised ·
            raw (W, D) float16: the encoder's own window embeddings, L2-normalised (version 2; absent when
            the projector is zero-shot, whose vectors are already those): text steering compares a
            prompt's ImageBind text embedding with these, in ImageBind's own space
    faiss/  index (B,) uint8: a serialised FAISS IVF index over the same vectors (optional)

Search ranks tracks by their best-matching window; that window's start is the suggested start
time. Exact search is a chunked matmul with a per-track max (`np.maximum.reduceat`); FAISS
search retrieves the top windows, keeps each track's best, and widens until it has k tracks.
"""

from __future__ import annotations

import json
import math
import os
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from mvbind.errors import MvbindError

FORMAT = "mvbind-library"
VERSION = 2  # 2: windows/raw and meta["raw"] (text steering); version 1 files still load, without steering
READS = (1, 2)
SUFFIX = ".mvlib.h5"
STR = h5py.string_dtype()
BYTES = h5py.string_dtype("ascii")


class LibraryError(MvbindError):
    """A library file can't be read or used as asked."""


@dataclass
class SearchResult:
    """Per query, the top tracks (best first): track index, score, best window index. -1 = none."""

    tracks: np.ndarray  # (Q, k) int64
    scores: np.ndarray  # (Q, k) float32
    windows: np.ndarray  # (Q, k) int64
    method: str = "exact"
    seconds: float = 0.0


@dataclass
class Library:
    """A loaded library. `vectors` are read from the file on first use (FAISS search never needs them)."""

    path: Path | None
    meta: dict
    keys: np.ndarray  # (T,) str
    paths: np.ndarray  # (T,) str
    titles: np.ndarray  # (T,) str
    artists: np.ndarray  # (T,) str
    durations: np.ndarray  # (T,) float32
    offsets: np.ndarray  # (T + 1,) int64
    starts: np.ndarray  # (W,) float32
    _vectors: np.ndarray | None = None  # (W, E) float32, L2-normalised
    _raw: np.ndarray | None = None  # (W, D) float32, L2-normalised encoder embeddings (steering)
    faiss_blob: np.ndarray | None = None  # serialised FAISS index (uint8)
    _faiss: object = None
    _window_track: np.ndarray | None = None

    @property
    def n_tracks(self) -> int:
        return len(self.keys)

    @property
    def n_windows(self) -> int:
        return len(self.starts)

    @property
    def dim(self) -> int:
        return int(self.meta.get("dim", 0))

    @property
    def has_faiss(self) -> bool:
        return self.faiss_blob is not None or self._faiss is not None

    @property
    def vectors(self) -> np.ndarray:
        if self._vectors is None:
            self._vectors = _read_vectors(self.path, self.n_windows, self.dim)
        return self._vectors

    @property
    def raw_space(self) -> dict | None:
        """{"space": encoder name, "dim", "stored": "raw" | "vectors"}, or None for a version-1 library."""
        return self.meta.get("raw")

    def steering_problem(self) -> str | None:
        """Why text can't steer this library (one line with the fix), or None when it can."""
        raw = self.raw_space
        if raw is None:
            return (f"{self.path}: this library (format version {self.meta.get('format_version', 1)}) keeps no raw "
                    "ImageBind window embeddings, so text can't steer it; rebuild it with `mvbind index`")
        if raw.get("space") != "imagebind":
            return (f"{self.path}: the library was built with the {raw.get('space')} encoder; text steering needs "
                    "ImageBind embeddings (encoder.name = \"imagebind\"), re-extract and re-index with it")
        return None

    @property
    def raw(self) -> np.ndarray:
        """(W, D) float32 L2-normalised encoder window embeddings (ImageBind's space for text)."""
        if self._raw is None:
            raw = self.raw_space
            if raw is None:
                raise LibraryError(self.steering_problem() or f"{self.path}: no raw window embeddings")
            if raw.get("stored") == "vectors":
                self._raw = self.vectors
            else:
                self._raw = _read_vectors(self.path, self.n_windows, int(raw["dim"]), "windows/raw")
        return self._raw

    @property
    def window_track(self) -> np.ndarray:
        if self._window_track is None:
            self._window_track = np.repeat(np.arange(self.n_tracks, dtype=np.int64), np.diff(self.offsets))
        return self._window_track

    def faiss_index(self):
        if self._faiss is None:
            if self.faiss_blob is None:
                raise LibraryError(f"{self.path}: the library has no FAISS index; rebuild it with "
                                   "`mvbind index --index faiss` or search with --search exact")
            faiss = import_faiss()
            self._faiss = faiss.deserialize_index(self.faiss_blob)
            self.faiss_blob = None  # the index holds its own copy
        return self._faiss

    def label(self, t: int) -> str:
        """'Title — Artist' from the tags, else the file name."""
        title, artist = str(self.titles[t]), str(self.artists[t])
        if title and artist:
            return f"{title} — {artist}"
        return title or Path(str(self.paths[t])).name

    def search(self, queries: np.ndarray, k: int, *, method: str = "exact", nprobe: int = 0,
               chunk_mb: int = 256) -> SearchResult:
        """Top-k tracks for each L2-normalised query (Q, E); `method` exact or faiss."""
        queries = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        if queries.shape[1] != self.dim:
            raise LibraryError(f"{self.path}: queries are {queries.shape[1]}-d, the library's vectors "
                               f"{self.dim}-d; use the run the library was built with")
        k = min(k, self.n_tracks)
        t0 = time.perf_counter()
        if method == "faiss":
            index = self.faiss_index()
            index.nprobe = int(nprobe or (self.meta.get("faiss") or {}).get("nprobe", 16))
            res = faiss_search(index, self.window_track, queries, k)
        elif method == "exact":
            res = exact_search(self.vectors, self.offsets, queries, k, chunk_mb=chunk_mb)
        else:
            raise LibraryError(f"unknown search method {method!r}; use exact or faiss")
        res.seconds = time.perf_counter() - t0
        return res


# -- search --------------------------------------------------------------------------------------
def exact_search(vectors: np.ndarray, offsets: np.ndarray, queries: np.ndarray, k: int, *,
                 chunk_mb: int = 256) -> SearchResult:
    """Exact top-k tracks by best window: chunked (windows x queries) matmul, per-track max."""
    n_tracks = len(offsets) - 1
    q = len(queries)
    k = min(k, n_tracks)
    best = np.empty((n_tracks, q), np.float32)
    rows = max(1024, int(chunk_mb * 2**20 / (4 * max(q, 1))))
    t = 0
    while t < n_tracks:
        a = int(offsets[t])
        t_end = max(int(np.searchsorted(offsets, a + rows, side="right")) - 1, t + 1)
        t_end = min(t_end, n_tracks)
        b = int(offsets[t_end])
        if q <= 8:  # a few queries: numpy's own single-threaded SIMD loop; a contended BLAS pool is slower
            scores = np.einsum("wd,qd->wq", vectors[a:b], queries)
        else:
            scores = vectors[a:b] @ queries.T  # (w, Q)
        best[t:t_end] = np.maximum.reduceat(scores, offsets[t:t_end] - a, axis=0)
        t = t_end
    best = best.T  # (Q, T)
    if k < n_tracks:
        top = np.argpartition(-best, k - 1, axis=1)[:, :k]
    else:
        top = np.tile(np.arange(n_tracks), (q, 1))
    order = np.argsort(-np.take_along_axis(best, top, axis=1), axis=1, kind="stable")
    top = np.take_along_axis(top, order, axis=1)
    top_scores = np.take_along_axis(best, top, axis=1)
    windows = np.empty_like(top)
    for i in range(q):  # the best window of each chosen track
        for j, tr in enumerate(top[i]):
            lo, hi = int(offsets[tr]), int(offsets[tr + 1])
            windows[i, j] = lo + int(np.argmax(np.einsum("wd,d->w", vectors[lo:hi], queries[i])))
    return SearchResult(top.astype(np.int64), top_scores.astype(np.float32), windows.astype(np.int64), "exact")


def faiss_search(index, window_track: np.ndarray, queries: np.ndarray, k: int) -> SearchResult:
    """Top-k tracks from a FAISS window index: each track's best retrieved window. Where fewer than k
    distinct tracks come back, it asks again for more windows, or, when the probed inverted lists
    ran dry, probes twice as many lists (up to all of them; the index's nprobe is restored)."""
    n_windows = index.ntotal
    n_tracks = int(window_track[-1]) + 1 if len(window_track) else 0
    k = min(k, n_tracks)
    q = len(queries)
    tracks = np.full((q, k), -1, np.int64)
    scores = np.full((q, k), -np.inf, np.float32)
    windows = np.full((q, k), -1, np.int64)
    nprobe0 = getattr(index, "nprobe", None)
    nlist = getattr(index, "nlist", None)
    todo = np.arange(q)
    kw = min(n_windows, max(256, 32 * k))
    try:
        while len(todo):
            dist, ids = index.search(queries[todo], kw)
            short, ran_dry = [], False
            can_widen = kw < n_windows or (nprobe0 is not None and index.nprobe < nlist)
            for row, i in enumerate(todo):
                valid = ids[row] >= 0
                wid, sc = ids[row][valid], dist[row][valid]
                tr = window_track[wid]
                _, first = np.unique(tr, return_index=True)
                first = np.sort(first)[:k]  # results are best first, so a track's first hit is its best
                n = len(first)
                if n < k and can_widen:
                    short.append(i)
                    ran_dry |= len(wid) < kw
                    continue
                tracks[i, :n], scores[i, :n], windows[i, :n] = tr[first], sc[first], wid[first]
            if not short:
                break
            todo = np.asarray(short)
            if ran_dry and nprobe0 is not None and index.nprobe < nlist:
                index.nprobe = min(index.nprobe * 2, nlist)
            else:
                kw = min(n_windows, kw * 4)
    finally:
        if nprobe0 is not None:
            index.nprobe = nprobe0
    return SearchResult(tracks, scores, windows, "faiss")


def import_faiss():
    try:
        import faiss
    except ImportError:
        raise LibraryError("FAISS is not installed; `pip install faiss-cpu` or use exact search "
                           "(--index exact / --search exact)") from None
    return faiss


def auto_nlist(n_windows: int) -> int:
    """About sqrt(W) inverted lists, a power of two in [16, 65536], with >= 39 training points each
    (1 000 000 windows: 1024 lists of ~1000; k-means on 2 cores takes seconds, not minutes)."""
    nlist = 2 ** int(round(math.log2(max(math.sqrt(max(n_windows, 1)), 1))))
    nlist = min(max(nlist, 16), 65536)
    while nlist > 1 and n_windows < 39 * nlist:
        nlist //= 2
    return max(nlist, 1)


def probe_queries(vectors: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Queries for measuring recall when no real ones exist: the normalised sum of two random
    library windows plus isotropic noise of the same size, so they fall between tracks, as a
    video's vector does, rather than on a stored window."""
    rng = np.random.default_rng(seed)
    w, e = vectors.shape
    a = vectors[rng.integers(0, w, n)].astype(np.float32)
    b = vectors[rng.integers(0, w, n)].astype(np.float32)
    noise = rng.standard_normal((n, e)).astype(np.float32) / math.sqrt(e)
    q = a + b + noise
    return q / np.linalg.norm(q, axis=1, keepdims=True)


def track_recall(exact: SearchResult, approx: SearchResult) -> float:
    """Mean fraction of the exact top-k tracks found in the approximate top-k."""
    hits = [len(set(e[e >= 0].tolist()) & set(a[a >= 0].tolist())) / max(1, int((e >= 0).sum()))
            for e, a in zip(exact.tracks, approx.tracks)]
    return float(np.mean(hits)) if hits else 1.0


def build_faiss(vectors: np.ndarray, offsets: np.ndarray, *, nlist: int = 0, target_recall: float = 0.98,
                queries: int = 200, seed: int = 0, k: int = 10, chunk_mb: int = 256) -> tuple[object, dict]:
    """An IVF index (inner product, fp16 scalar quantiser = the library's own precision) over the
    window vectors, and its build report: nprobe is doubled until track recall@k against exact
    search on probe queries reaches `target_recall` (or every list is probed)."""
    faiss = import_faiss()
    t0 = time.perf_counter()
    w, e = vectors.shape
    nlist = nlist or auto_nlist(w)
    nlist = max(1, min(nlist, w))
    quantizer = faiss.IndexFlatIP(e)
    index = faiss.IndexIVFScalarQuantizer(quantizer, e, nlist, faiss.ScalarQuantizer.QT_fp16,
                                          faiss.METRIC_INNER_PRODUCT)
    rng = np.random.default_rng(seed)
    n_train = min(w, max(48 * nlist, 10_000))
    sample = vectors[np.sort(rng.choice(w, n_train, replace=False))] if n_train < w else vectors
    index.train(np.ascontiguousarray(sample, dtype=np.float32))
    for a in range(0, w, 262_144):
        index.add(np.ascontiguousarray(vectors[a:a + 262_144], dtype=np.float32))
    build_seconds = time.perf_counter() - t0

    window_track = np.repeat(np.arange(len(offsets) - 1, dtype=np.int64), np.diff(offsets))
    probes = probe_queries(vectors, queries, seed + 1)
    kk = min(k, len(offsets) - 1)
    t1 = time.perf_counter()
    exact = exact_search(vectors, offsets, probes, kk, chunk_mb=chunk_mb)
    exact_ms = (time.perf_counter() - t1) * 1000 / len(probes)
    nprobe, recall, query_ms = 1, 0.0, 0.0
    tried = []
    while True:
        index.nprobe = nprobe
        t2 = time.perf_counter()
        approx = faiss_search(index, window_track, probes, kk)
        query_ms = (time.perf_counter() - t2) * 1000 / len(probes)
        recall = track_recall(exact, approx)
        tried.append({"nprobe": nprobe, "recall_at_10": round(recall, 4), "ms_per_query": round(query_ms, 3)})
        if recall >= target_recall or nprobe >= nlist:
            break
        nprobe = min(nprobe * 2, nlist)
    info = {"kind": f"IVF{nlist},SQfp16", "metric": "inner_product", "nlist": nlist, "nprobe": nprobe,
            "recall_at_10": round(recall, 4), "k": kk, "probe_queries": len(probes),
            "target_recall": target_recall, "ms_per_query": round(query_ms, 3),
            "exact_ms_per_query": round(exact_ms, 3), "build_seconds": round(build_seconds, 3),
            "tuning": tried, "seconds": round(time.perf_counter() - t0, 3)}
    return index, info


# -- file ----------------------------------------------------------------------------------------
def write_library(path: str | Path, *, meta: dict, keys, paths, titles, artists, durations, offsets: np.ndarray,
                  starts: np.ndarray, vectors: np.ndarray, raw: np.ndarray | None = None, raw_space: str = "",
                  faiss_index=None) -> Path:
    """Write a library file atomically (temp file, fsync, rename over any older one).

    `raw`: the encoder's own window embeddings (any norm; stored L2-normalised), or None when `vectors`
    already are those (zero-shot); `raw_space` names the encoder they come from."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    offsets = np.asarray(offsets, np.int64)
    n_tracks, n_windows = len(keys), len(starts)
    if len(offsets) != n_tracks + 1 or offsets[-1] != n_windows or len(vectors) != n_windows:
        raise ValueError(f"inconsistent library: {n_tracks} tracks, {len(offsets)} offsets, {n_windows} starts, "
                         f"{len(vectors)} vectors")
    if n_tracks and np.any(np.diff(offsets) < 1):
        raise ValueError("every track needs at least one window")
    if raw is not None and len(raw) != n_windows:
        raise ValueError(f"inconsistent library: {n_windows} windows, {len(raw)} raw embeddings")
    meta = {**meta, "tracks": n_tracks, "windows": n_windows, "dim": int(vectors.shape[1]), "format_version": VERSION,
            "raw": {"space": raw_space, "dim": int(vectors.shape[1] if raw is None else raw.shape[1]),
                    "stored": "vectors" if raw is None else "raw"} if raw_space else None}
    tmp = path.with_name(f".tmp-{uuid.uuid4().hex[:8]}-{path.name}")
    try:
        with h5py.File(tmp, "w") as f:
            f.attrs["format"] = FORMAT
            f.attrs["version"] = VERSION
            f.attrs["meta"] = json.dumps(meta, sort_keys=True)
            t = f.create_group("tracks")
            t.create_dataset("key", data=[str(k) for k in keys], dtype=STR)
            t.create_dataset("path", data=np.array([os.fsencode(str(p)) for p in paths], dtype=object), dtype=BYTES)
            t.create_dataset("title", data=[str(x) for x in titles], dtype=STR)
            t.create_dataset("artist", data=[str(x) for x in artists], dtype=STR)
            t.create_dataset("duration", data=np.asarray(durations, np.float32))
            t.create_dataset("window_offsets", data=offsets)
            w = f.create_group("windows")
            w.create_dataset("start", data=np.asarray(starts, np.float32))
            vec = w.create_dataset("vectors", shape=vectors.shape, dtype=np.float16,
                                   chunks=(min(max(n_windows, 1), 16384), vectors.shape[1]) if n_windows else None)
            for a in range(0, n_windows, 262_144):
                vec[a:a + 262_144] = vectors[a:a + 262_144].astype(np.float16)
            if raw is not None:
                rv = w.create_dataset("raw", shape=raw.shape, dtype=np.float16,
                                      chunks=(min(max(n_windows, 1), 16384), raw.shape[1]) if n_windows else None)
                for a in range(0, n_windows, 262_144):
                    part = np.asarray(raw[a:a + 262_144], np.float32)
                    rv[a:a + 262_144] = (part / np.maximum(np.linalg.norm(part, axis=1, keepdims=True), 1e-12)
                                         ).astype(np.float16)
            if faiss_index is not None:
                blob = import_faiss().serialize_index(faiss_index)
                f.create_group("faiss").create_dataset("index", data=np.asarray(blob, np.uint8))
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def _damaged(path: Path, reason: str) -> LibraryError:
    return LibraryError(f"{path}: library file is truncated or damaged ({reason}); rebuild it with `mvbind index`")


def _open(path: Path) -> h5py.File:
    if not path.exists():
        raise LibraryError(f"{path}: no such library file; build one with `mvbind index MUSIC_FOLDER`")
    if path.is_dir():
        raise LibraryError(f"{path}: is a folder, not a library file; pass the .mvlib.h5 file `mvbind index` wrote")
    if path.stat().st_size == 0:
        raise _damaged(path, "0 bytes")
    try:
        return h5py.File(path, "r")
    except OSError as err:
        text = " ".join(str(err).split())
        if "signature not found" in text:
            raise LibraryError(f"{path}: not an mvbind library file (not HDF5); pass the file `mvbind index` "
                               "wrote") from None
        raise _damaged(path, text[:160]) from None


def read_header(path: str | Path) -> dict:
    """Format checks and the library's metadata, without reading its vectors."""
    path = Path(path)
    with _open(path) as f:
        return _header(path, f)


def _header(path: Path, f: h5py.File) -> dict:
    fmt = f.attrs.get("format")
    if isinstance(fmt, bytes):
        fmt = fmt.decode()
    if fmt != FORMAT:
        raise LibraryError(f"{path}: not an mvbind library file (format {fmt!r}); pass the file `mvbind index` wrote")
    version = int(f.attrs.get("version", -1))
    if version > VERSION:
        raise LibraryError(f"{path}: library format version {version} is newer than this mvbind reads "
                           f"(version {VERSION}); upgrade mvbind or rebuild the library with `mvbind index`")
    if version not in READS:
        raise LibraryError(f"{path}: library format version {version}, this mvbind reads versions "
                           f"{', '.join(map(str, READS))}; rebuild the library with `mvbind index`")
    try:
        meta = json.loads(f.attrs["meta"])
    except (KeyError, ValueError, TypeError) as err:
        raise _damaged(path, f"metadata unreadable: {err}") from None
    meta["format_version"] = version
    if version < 2:
        meta["raw"] = None
    return meta


def load_library(path: str | Path, *, vectors: bool = False) -> Library:
    """Read a library file (checked); its vectors now only with `vectors=True`, else on first use."""
    path = Path(path)
    try:
        with _open(path) as f:
            meta = _header(path, f)
            t, w = f["tracks"], f["windows"]
            lib = Library(
                path=path, meta=meta,
                keys=t["key"].asstr()[:].astype(object),
                paths=np.array([os.fsdecode(p) for p in t["path"][:]], dtype=object),
                titles=t["title"].asstr()[:].astype(object),
                artists=t["artist"].asstr()[:].astype(object),
                durations=t["duration"][:],
                offsets=t["window_offsets"][:].astype(np.int64),
                starts=w["start"][:],
                faiss_blob=f["faiss/index"][:] if "faiss" in f and "index" in f["faiss"] else None,
            )
            n_t, n_w = len(lib.keys), len(lib.starts)
            shape = w["vectors"].shape
            if (len(lib.offsets) != n_t + 1 or (n_t and (lib.offsets[0] != 0 or lib.offsets[-1] != n_w))
                    or shape != (n_w, meta.get("dim")) or any(len(a) != n_t for a in
                                                                (lib.paths, lib.titles, lib.artists, lib.durations))
                    or meta.get("tracks") != n_t or meta.get("windows") != n_w
                    or (n_t and np.any(np.diff(lib.offsets) < 1))):
                raise _damaged(path, f"inconsistent sizes: {n_t} tracks, {len(lib.offsets)} offsets, {n_w} windows, "
                                     f"vectors {shape}")
    except LibraryError:
        raise
    except (KeyError, OSError, ValueError, TypeError) as err:
        raise _damaged(path, " ".join(str(err).split())[:160] or type(err).__name__) from None
    if vectors:
        _ = lib.vectors
    return lib


def _read_vectors(path: Path | None, n: int, dim: int, name: str = "windows/vectors") -> np.ndarray:
    if path is None:
        return np.zeros((0, dim), np.float32)
    out = np.empty((n, dim), np.float32)
    try:
        with h5py.File(path, "r") as f:
            vec = f[name]
            if vec.shape != (n, dim):
                raise ValueError(f"{name} is {vec.shape}, expected {(n, dim)}")
            for a in range(0, n, 262_144):
                out[a:a + 262_144] = vec[a:a + 262_144]
    except (KeyError, OSError, ValueError) as err:
        raise _damaged(path, " ".join(str(err).split())[:160]) from None
    return out


# -- tags ----------------------------------------------------------------------------------------
@dataclass
class Tags:
    title: str = ""
    artist: str = ""
    extra: dict = field(default_factory=dict)


def read_tags(path: str | Path) -> Tags:
    """Title and artist from the file's tags (ID3, Vorbis comments, MP4 atoms, ...) via PyAV/FFmpeg:
    the container's metadata, then the audio stream's (Ogg/Opus keep them there). "" when absent."""
    import av

    try:
        with av.open(str(path), mode="r") as c:
            found: dict[str, str] = {}
            sources = [c.metadata] + [s.metadata for s in c.streams.audio[:1]]
            for md in sources:
                for key, value in (md or {}).items():
                    k = key.lower()
                    if k not in found and str(value).strip():
                        found[k] = " ".join(str(value).split())
    except Exception:  # noqa: BLE001 - tags are optional: an unreadable tag block means no tags
        return Tags()
    return Tags(title=found.get("title", ""), artist=found.get("artist", "") or found.get("album_artist", ""))
