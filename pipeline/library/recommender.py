"""`Recommender`: load a run, a music library and the encoder once; recommend tracks for videos.

    video ─► content key ─► cached? read its per-clip embeddings (no lock, an incremental key index)
                          └► else decode + embed in memory (the encoder is built on first need and
                             shared behind a lock) ─► optionally committed as an "online" shard
          ─► the run's video head (or zero-shot) ─► library search (best window per track)
          ─► top-k tracks with the suggested start

Nothing here takes an extract lock, so recommendations run beside an `extract` job or each other.
"""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mvbind.cache import FeatureCache, Row, content_key, fingerprint
from mvbind.errors import MvbindError, open_reason
from mvbind.pipeline.config import Config
from mvbind.pipeline.console import say
from mvbind.pipeline.encoders.base import extractor_settings, make_embedder, make_preparer
from mvbind.pipeline.library.beats import align_results
from mvbind.pipeline.library.locate import resolve_library
from mvbind.pipeline.library.projector import Projector, check_compatible, load_projector
from mvbind.pipeline.library.steer import TextEncoder, best_windows, combine
from mvbind.pipeline.library.store import Library, LibraryError, load_library, read_header


@dataclass
class Recommendation:
    video: str
    key: str
    duration: float
    results: list[dict] = field(default_factory=list)  # rank, track, title, artist, label, score, start, ...
    preview: str | None = None
    preview_audio: str | None = None


@dataclass
class RecommendReport:
    library: str
    mode: str  # "run" | "zero-shot"
    projector: str
    search: str
    k: int
    k_requested: int
    library_tracks: int
    library_windows: int
    recommendations: list[Recommendation] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: dict = field(default_factory=dict)
    steering: dict | None = None  # {"kind": "steered" | "text only (zero-shot)", "text", "weight"}

    def to_json(self) -> dict:
        return {
            "library": self.library, "mode": self.mode, "projector": self.projector, "search": self.search,
            "k": self.k, "k_requested": self.k_requested, "k_clamped": self.k < self.k_requested,
            "library_tracks": self.library_tracks, "library_windows": self.library_windows,
            "videos": [dataclasses.asdict(r) for r in self.recommendations],
            "failed": [{"path": p, "reason": r} for p, r in self.failed],
            "notes": self.notes, "seconds": {k: round(v, 4) for k, v in self.seconds.items()},
            "steering": self.steering,
        }

    def table(self) -> str:
        lines = [f"# {self.projector}", f"# library {self.library}: {self.library_tracks} tracks, "
                 f"{self.library_windows} windows; {self.search} search"]
        if self.steering and self.steering["kind"] == "steered":
            lines.append(f"# steered by the text \"{self.steering['text']}\" (weight {self.steering['weight']:g}): "
                         "scores mix the standardised video and text scores")
        elif self.steering:
            lines.append(f"# text only, zero-shot (ImageBind text → music): \"{self.steering['text']}\"; "
                         "scores are text–window cosines")
        for rec in self.recommendations:
            lines.append("")
            what = f"{rec.video} ({rec.duration:.1f} s)" if rec.key else rec.video
            lines.append(f"{what}: top {len(rec.results)}")
            beats = any("aligned_start" in r for r in rec.results)
            rows = [("rank", "score", "start", *(("beat start",) if beats else ()), "track", "file")]
            for r in rec.results:
                aligned = (fmt_beat(r),) if beats else ()
                rows.append((str(r["rank"]), f"{r['score']:.3f}", fmt_time(r["start"]), *aligned, r["label"],
                             os.path.basename(r["track"])))
            widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
            for n, row in enumerate(rows):
                cells = [c.rjust(w) for c, w in zip(row[:-2], widths)] + [row[-2].ljust(widths[-2]), row[-1]]
                lines.append("  ".join(cells).rstrip())
                if n == 0:
                    lines.append("  ".join("-" * w for w in widths))
            if rec.preview:
                lines.append(f"preview ({rec.preview_audio}): {rec.preview}")
        return "\n".join(lines) + "\n"


def fmt_time(seconds: float) -> str:
    m, s = divmod(max(0.0, float(seconds)), 60.0)
    return f"{int(m)}:{s:04.1f}"


def fmt_beat(result: dict) -> str:
    """The beat-aligned start to the hundredth (a beat is a few tenths) and its score: "0:12.35 (0.80)";
    "-" where nothing could be aligned."""
    if result.get("alignment") is None:
        return "-"
    m, s = divmod(max(0.0, float(result["aligned_start"])), 60.0)
    return f"{int(m)}:{s:05.2f} ({result['alignment']:.2f})"


@dataclass
class EmbeddedVideo:
    """One video's per-clip embeddings (fp16 precision, as the cache stores them), or why not."""

    path: str
    key: str
    video: np.ndarray | None  # (clips, dim) float32 holding fp16 values
    duration: float
    cached: bool  # read from the cache rather than embedded now
    reason: str = ""
    seconds: dict = field(default_factory=dict)  # hash, read (cache), decode, encode


@dataclass
class IndexedVideo:
    """A video already in the feature cache (committed by `extract` or an earlier recommendation)."""

    key: str
    path: str  # where it was read from when it was embedded (the server's path, never a client's)
    duration: float
    exists: bool  # the file is still there to be played


class Recommender:
    """Recommend library tracks for videos; everything expensive is loaded once.

    >>> rec = Recommender(load_config(), library="mylib", run="base")
    >>> report = rec.recommend(["clip.mp4"], k=5)
    >>> report.recommendations[0].results[0]["title"], report.recommendations[0].results[0]["start"]

    Thread-safe: the encoder runs behind a lock (one forward at a time), everything else is read-only
    or per call. `cache_writes` commits newly embedded videos to the feature cache as "online" shards
    (unique names, no lock: never blocks, never waits for an extract job).
    """

    def __init__(self, config: Config, *, library: str | Path | Library, run: str | Path | None = None,
                 projector: Projector | None = None, cache_writes: bool = True, progress: bool = False):
        self.config = config
        self.cache_writes = cache_writes
        self.settings = extractor_settings(config, download=True, progress=progress)
        self.fingerprint = fingerprint(self.settings)
        if projector is None:
            projector = load_projector(config, run, self.settings)
        elif projector.fingerprint != self.fingerprint:
            raise MvbindError(f"the given projector belongs to cache {projector.fingerprint[:16]}, these encoder "
                              f"settings give {self.fingerprint[:16]}; load it with the same settings")
        self.projector = projector
        if isinstance(library, Library):
            lib_path, header, lib = Path(library.path), library.meta, library
        else:
            lib_path = resolve_library(config, library)
            header = read_header(lib_path)  # format, version and damage checks before any work
            lib = None
        check_compatible(lib_path, header, projector)
        self.library = lib if lib is not None else load_library(lib_path)
        self.library_path = lib_path
        if self.library.n_tracks == 0:
            raise LibraryError(f"{lib_path}: the library holds no tracks; re-index a folder with music files")
        self._cache = FeatureCache(config.cache_dir)
        self._index = None
        self._lock = threading.Lock()  # the encoder and the key index
        self._preparer = None
        self._embedder = None
        self._text: TextEncoder | None = None  # built on the first text query only
        self._progress = progress

    # -- embedding ------------------------------------------------------------------------
    def _key_index(self):
        if self._index is None:
            ns = self._cache.create(self.settings) if self.cache_writes else self._find_namespace()
            self._index = ns.key_index() if ns is not None else None
        return self._index

    def _find_namespace(self):
        try:
            return self._cache.get(self.settings)
        except MvbindError:
            return None

    def embed(self, path: str | Path) -> EmbeddedVideo:
        """The video's per-clip embeddings: from the cache when committed, else computed in memory."""
        path = str(path)
        t = time.perf_counter()
        try:
            key = content_key(path)
        except OSError as err:
            return EmbeddedVideo(path, "", None, 0.0, False, open_reason(err))
        seconds = {"hash": time.perf_counter() - t}
        cached = self.embed_key(key, path=path)
        if cached is not None:
            cached.seconds = {**seconds, **cached.seconds}
            return cached
        if self._preparer is None:
            self._preparer = make_preparer(dataclasses.replace(
                self.config, extract=dataclasses.replace(self.config.extract, workers=0)))
        t = time.perf_counter()
        inputs = self._preparer(path)
        seconds["decode"] = time.perf_counter() - t
        if inputs.get("video") is None:
            return EmbeddedVideo(path, key, None, inputs.duration, False, inputs.reason("video"), seconds)
        t = time.perf_counter()
        with self._lock:
            if self._embedder is None:
                self._embedder = make_embedder(self.config, progress=self._progress)
            out = self._embedder.embed([inputs])
        seconds["encode"] = time.perf_counter() - t
        clips = out["video"][0].astype(np.float16)  # what the cache would store: cached and fresh results agree
        if self.cache_writes:
            audio = out["audio"][0]
            self._commit(Row(key=key, path=path, audio=None if audio is None else audio.astype(np.float16),
                             video=clips, duration=float(inputs.duration)))
        return EmbeddedVideo(path, key, clips.astype(np.float32), float(inputs.duration), False, seconds=seconds)

    def embed_key(self, key: str, *, path: str | None = None) -> EmbeddedVideo | None:
        """A committed video's embeddings by its content key; None when the cache has no video for it."""
        t = time.perf_counter()
        with self._lock:
            index = self._key_index()
            row = index.read(key) if index is not None else None
        if row is None or not bool(row.video_mask[0]):
            return None
        return EmbeddedVideo(path or row.paths[0], key, row.video[0].astype(np.float32), float(row.duration[0]),
                             True, seconds={"read": time.perf_counter() - t})

    def indexed_videos(self, limit: int | None = None) -> list[IndexedVideo]:
        """Videos the feature cache already holds embeddings for (at most `limit`), in commit order."""
        ns = self._find_namespace()
        out: list[IndexedVideo] = []
        if ns is None:
            return out
        for key, path, has_video, _has_audio, duration in ns.catalog():
            if limit is not None and len(out) >= limit:
                break
            if has_video:
                out.append(IndexedVideo(key, path, duration, os.path.isfile(path)))
        return out

    def _commit(self, row: Row) -> None:
        try:
            ns = self._cache.create(self.settings)
            ns.write_shard([row], prefix="online")
        except (OSError, MvbindError) as err:  # a full or read-only cache must not fail a recommendation
            say(f"note: {row.path} was not written to the cache ({err})")

    # -- ranking --------------------------------------------------------------------------
    def recommend(self, videos: Sequence[str | Path | EmbeddedVideo] = (), *, k: int | None = None,
                  search: str | None = None, curves: bool = False, text: str | None = None,
                  text_weight: float | None = None, notify: Callable[[str], None] = say) -> RecommendReport:
        """Top-k library tracks for each video, with the suggested start in each track.

        `videos` are files, or `EmbeddedVideo`s from `embed`/`embed_key`. With `curves`, each result
        also has "curve": the score of every window of the track, [[start s, score], ...], so a
        caller can show where in the track the video fits. With `text`, the ranking is steered by
        the prompt (mvbind.pipeline.library.steer: the rule and why), weighted `text_weight`
        (default recommend.text_weight); with `text` and no video, the library is searched by the
        text alone (zero-shot)."""
        t0 = time.perf_counter()
        rc = self.config.recommend
        lib = self.library
        k_requested = int(k if k is not None else rc.k)
        if k_requested < 1:
            raise MvbindError(f"-k {k_requested}: need at least 1 track per video")
        if not videos and text is None:
            raise MvbindError("no video given; pass one or more video files (or --text \"a few words\")")
        search = search or rc.search
        method = ("faiss" if lib.has_faiss else "exact") if search == "auto" else search
        if method == "faiss" and not lib.has_faiss:
            raise LibraryError(f"{self.library_path}: the library has no FAISS index; rebuild it with "
                               "`mvbind index --index faiss` or search with --search exact")
        notes: list[str] = []
        kk = min(k_requested, lib.n_tracks)
        if kk < k_requested:
            notes.append(f"-k {k_requested} is more than the library's {lib.n_tracks} tracks; showing all {kk}")

        secs: dict[str, float] = {}
        steering, text_scores = None, None
        if text is not None:
            steering, text_scores = self._text_scores(text, text_weight, bool(videos), secs)
            if method == "faiss":
                notes.append("steered search scores every window exactly (the FAISS index is not used)")
            method = "exact"
        ok: list[EmbeddedVideo] = []
        failed: list[tuple[str, str]] = []
        queries = np.zeros((0, lib.dim), np.float32)
        if videos:
            t = time.perf_counter()
            embedded = [v if isinstance(v, EmbeddedVideo) else self.embed(v) for v in videos]
            secs["embed"] = time.perf_counter() - t
            for e in embedded:
                for part, value in e.seconds.items():
                    secs[part] = secs.get(part, 0.0) + value
            ok = [e for e in embedded if e.video is not None]
            failed = [(e.path, e.reason) for e in embedded if e.video is None]
            for path, reason in failed:
                notify(f"skipped {path}: {reason}")
            if not ok:
                raise MvbindError(f"no video could be embedded ({failed[0][0]}: {failed[0][1]})")
            t = time.perf_counter()
            queries = self.projector.videos(np.stack([e.video for e in ok]))
            secs["project"] = time.perf_counter() - t

        nprobe = rc.nprobe or (lib.meta.get("faiss") or {}).get("nprobe")
        report = RecommendReport(library=str(self.library_path), mode=self.projector.kind,
                                 projector=self.projector.describe(),
                                 search=method + (f" (nprobe {nprobe})" if method == "faiss" else ""),
                                 k=kk, k_requested=k_requested, library_tracks=lib.n_tracks,
                                 library_windows=lib.n_windows, failed=failed, notes=notes, steering=steering)
        t = time.perf_counter()
        if steering is None:
            res = lib.search(queries, kk, method=method, nprobe=rc.nprobe, chunk_mb=rc.chunk_mb)
            for q, e in enumerate(ok):
                rec = Recommendation(video=e.path, key=e.key, duration=e.duration)
                for tr, sc, win in zip(res.tracks[q], res.scores[q], res.windows[q]):
                    if tr >= 0:
                        rec.results.append(self._result(len(rec.results) + 1, int(tr), float(sc), int(win)))
                        if curves:
                            rec.results[-1]["curve"] = self.curve(queries[q], int(tr))
                report.recommendations.append(rec)
        else:
            targets = [(e, lib.vectors @ queries[q]) for q, e in enumerate(ok)] or [(None, None)]
            for e, video_scores in targets:
                scores = combine(video_scores, text_scores, steering["weight"])
                rec = (Recommendation(video=e.path, key=e.key, duration=e.duration) if e is not None
                       else Recommendation(video=f"text: {steering['text']}", key="", duration=0.0))
                for tr, sc, win in zip(*best_windows(scores, lib.offsets, kk)):
                    r = self._result(len(rec.results) + 1, int(tr), float(sc), int(win))
                    r["text_score"] = round(float(text_scores[win]), 4)
                    if video_scores is not None:
                        r["video_score"] = round(float(video_scores[win]), 4)
                    if curves:
                        lo, hi = int(lib.offsets[tr]), int(lib.offsets[tr + 1])
                        r["curve"] = [[round(float(st), 3), round(float(sc), 4)]
                                      for st, sc in zip(lib.starts[lo:hi], scores[lo:hi])]
                    rec.results.append(r)
                report.recommendations.append(rec)
        secs["search"] = time.perf_counter() - t
        if rc.beat_align:  # a start that puts the video's cuts on the track's beats (not for a text alone)
            t = time.perf_counter()
            for rec in report.recommendations:
                if rec.key and rec.results:
                    notes += align_results(rec.results, rec.video, search=rc.beat_search, tolerance=rc.beat_tolerance)
            secs["beats"] = time.perf_counter() - t
        secs["total"] = time.perf_counter() - t0
        report.seconds = secs
        return report

    def _result(self, rank: int, tr: int, score: float, win: int) -> dict:
        lib = self.library
        return {"rank": rank, "track": str(lib.paths[tr]), "title": str(lib.titles[tr]),
                "artist": str(lib.artists[tr]), "label": lib.label(tr), "score": round(score, 4),
                "start": round(float(lib.starts[win]), 3), "window": int(win - lib.offsets[tr]),
                "track_duration": round(float(lib.durations[tr]), 3), "key": str(lib.keys[tr]), "id": tr}

    def _text_scores(self, text: str, weight: float | None, with_video: bool,
                     secs: dict[str, float]) -> tuple[dict, np.ndarray]:
        """The steering description and the prompt's score on every library window (raw ImageBind cosine)."""
        lib = self.library
        problem = lib.steering_problem()
        if problem:
            raise LibraryError(problem)
        weight = float(self.config.recommend.text_weight if weight is None else weight)
        if with_video and not 0.0 <= weight <= 1.0:
            raise MvbindError(f"--text-weight {weight}: must be in [0, 1] (0 = the video only, 1 = the text only)")
        t = time.perf_counter()
        if self._text is None:
            self._text = TextEncoder(self.config, progress=self._progress)
        vec = self._text.embed(text)
        secs["text"] = time.perf_counter() - t
        if vec.shape[0] != lib.raw.shape[1]:
            raise LibraryError(f"{self.library_path}: its raw window embeddings are {lib.raw.shape[1]}-d, this "
                               f"encoder's text embeddings {vec.shape[0]}-d; use the encoder settings it was "
                               "built with")
        kind = "steered" if with_video else "text only (zero-shot)"
        steering = {"kind": kind, "text": " ".join(text.split()), "weight": weight if with_video else 1.0}
        return steering, lib.raw @ vec

    def curve(self, query: np.ndarray, track: int) -> list[list[float]]:
        """[[window start s, score], ...] of one track for one projected query (the score search ranks by)."""
        lib = self.library
        lo, hi = int(lib.offsets[track]), int(lib.offsets[track + 1])
        scores = lib.vectors[lo:hi] @ np.asarray(query, np.float32)
        return [[round(float(st), 3), round(float(sc), 4)] for st, sc in zip(lib.starts[lo:hi], scores)]
