"""`recommend`: the tracks of a music library that fit a video, each with the moment to start from.

    video(s) ─► stage one (the video namespace of the encoder's settings; cached videos are not
                decoded again) ─► pooled + projected by the run's video head (or zero-shot)
             ─► library search: tracks ranked by their best-matching window; suggested start =
                that window's start ─► table or JSON; --preview DIR: the video with its top track

Refuses, in one line, a library built for other encoder settings or another projector.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mvbind.cache import FeatureCache, fingerprint
from mvbind.errors import MvbindError
from mvbind.pipeline.config.loader import Config
from mvbind.pipeline.console import say
from mvbind.pipeline.encoders.base import extractor_settings
from mvbind.pipeline.library.locate import resolve_library
from mvbind.pipeline.library.projector import Projector, check_compatible, load_projector
from mvbind.pipeline.library.store import Library, LibraryError, load_library, read_header
from mvbind.pipeline.media.ffmpeg import ffmpeg_exe
from mvbind.pipeline.media.inputs import InputItem
from mvbind.pipeline.runner import run_extraction

AUDIO_CODECS = {".webm": "libopus", ".ogv": "libvorbis", ".ogg": "libvorbis", ".avi": "libmp3lame"}  # else aac


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

    def to_json(self) -> dict:
        return {
            "library": self.library, "mode": self.mode, "projector": self.projector, "search": self.search,
            "k": self.k, "k_requested": self.k_requested, "k_clamped": self.k < self.k_requested,
            "library_tracks": self.library_tracks, "library_windows": self.library_windows,
            "videos": [dataclasses.asdict(r) for r in self.recommendations],
            "failed": [{"path": p, "reason": r} for p, r in self.failed],
            "notes": self.notes, "seconds": {k: round(v, 4) for k, v in self.seconds.items()},
        }

    def table(self) -> str:
        lines = [f"# {self.projector}", f"# library {self.library}: {self.library_tracks} tracks, "
                 f"{self.library_windows} windows; {self.search} search"]
        for rec in self.recommendations:
            lines.append("")
            lines.append(f"{rec.video} ({rec.duration:.1f} s): top {len(rec.results)}")
            rows = [("rank", "score", "start", "track", "file")]
            for r in rec.results:
                rows.append((str(r["rank"]), f"{r['score']:.3f}", fmt_time(r["start"]), r["label"],
                             os.path.basename(r["track"])))
            widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
            for n, row in enumerate(rows):
                cells = [row[0].rjust(widths[0]), row[1].rjust(widths[1]), row[2].rjust(widths[2]),
                         row[3].ljust(widths[3]), row[4]]
                lines.append("  ".join(cells).rstrip())
                if n == 0:
                    lines.append("  ".join("-" * w for w in widths))
            if rec.preview:
                lines.append(f"preview ({rec.preview_audio}): {rec.preview}")
        return "\n".join(lines) + "\n"


def fmt_time(seconds: float) -> str:
    m, s = divmod(max(0.0, float(seconds)), 60.0)
    return f"{int(m)}:{s:04.1f}"


def _reason_for(path: str, failed: dict[str, str], earlier: dict[str, str]) -> str:
    return failed.get(path) or earlier.get(path) or "not embedded"


def recommend(config: Config, videos: list[str | Path], *, library: str | Path | Library,
              run: str | Path | None = None, projector: Projector | None = None,
              k: int | None = None, search: str | None = None, preview: str | Path | None = None,
              progress: bool = True, notify: Callable[[str], None] = say) -> RecommendReport:
    """Top-k library tracks for each video; writes previews into `preview` when given.

    `library` is a library file, a name in library.dir, or a `Library` already loaded (then it is
    not read again: load once with `pipeline.library.load_library`, query many times); likewise
    `projector` replaces `run` with one already loaded by `stages.index.load_projector`."""
    t0 = time.perf_counter()
    secs: dict[str, float] = {}
    rc = config.recommend
    k_requested = int(k if k is not None else rc.k)
    if k_requested < 1:
        raise MvbindError(f"-k {k_requested}: need at least 1 track per video")
    search = search or rc.search
    if not videos:
        raise MvbindError("no video given; pass one or more video files")
    if isinstance(library, Library):  # already loaded (a service answering many queries)
        lib_path, header, lib = library.path, library.meta, library
    else:
        lib_path = resolve_library(config, library)
        header = read_header(lib_path)  # format, version and damage checks before any work
        lib = None
    video_settings = extractor_settings(config, download=True, progress=progress)
    if projector is None:
        projector = load_projector(config, run, video_settings)
    elif projector.fingerprint != fingerprint(video_settings):
        raise MvbindError(f"the given projector belongs to cache {projector.fingerprint[:16]}, these encoder settings "
                          f"give {fingerprint(video_settings)[:16]}; load it with the same settings")
    check_compatible(lib_path, header, projector)
    t = time.perf_counter()
    if lib is None:
        lib = load_library(lib_path)
    secs["load_library"] = time.perf_counter() - t
    if lib.n_tracks == 0:
        raise LibraryError(f"{lib_path}: the library holds no tracks; re-index a folder with music files")
    method = ("faiss" if lib.has_faiss else "exact") if search == "auto" else search
    if method == "faiss" and not lib.has_faiss:
        raise LibraryError(f"{lib_path}: the library has no FAISS index; rebuild it with `cli.py index --index faiss` "
                           "or search with --search exact")
    notes: list[str] = []
    kk = min(k_requested, lib.n_tracks)
    if kk < k_requested:
        notes.append(f"-k {k_requested} is more than the library's {lib.n_tracks} tracks; showing all {kk}")

    # Embed the videos through the cache (a cached video is only hashed, never decoded again).
    items = [InputItem(path=str(v)) for v in videos]
    cfg = dataclasses.replace(config, extract=dataclasses.replace(config.extract, retry_failed=True))
    t = time.perf_counter()
    summary = run_extraction(cfg, items, require=("video",), progress=progress, lazy_model=True)
    secs["embed"] = time.perf_counter() - t
    ns = FeatureCache(config.cache_dir).find(summary.namespace)
    failed_now = dict(summary.failed)
    earlier = {f.path: f.reason for f in ns.failures()}
    keys = [summary.item_keys.get(it.path, "") for it in items]
    feats = ns.select([k_ for k_ in keys if k_])
    row_of = {str(key): i for i, key in enumerate(feats.keys) if feats.video_mask[i]}
    ok, failed = [], []
    for it, key in zip(items, keys):
        if key and key in row_of and it.path not in failed_now:
            ok.append((it, key))
        else:
            failed.append((it.path, _reason_for(it.path, failed_now, earlier)))
    for path, reason in failed:
        notify(f"skipped {path}: {reason}")
    if not ok:
        raise MvbindError(f"no video could be embedded ({failed[0][0]}: {failed[0][1]})")

    t = time.perf_counter()
    rows = np.array([row_of[key] for _, key in ok], np.int64)
    queries = projector.videos(feats.video[rows])
    secs["project"] = time.perf_counter() - t
    res = lib.search(queries, kk, method=method, nprobe=rc.nprobe, chunk_mb=rc.chunk_mb)
    secs["search"] = res.seconds
    report = RecommendReport(library=str(lib_path), mode=projector.kind, projector=projector.describe(),
                             search=method + (f" (nprobe {rc.nprobe or (lib.meta.get('faiss') or {}).get('nprobe')})"
                                              if method == "faiss" else ""),
                             k=kk, k_requested=k_requested, library_tracks=lib.n_tracks,
                             library_windows=lib.n_windows, failed=failed, notes=notes)
    for q, (it, key) in enumerate(ok):
        rec = Recommendation(video=it.path, key=key, duration=float(feats.duration[row_of[key]]))
        for rank, (tr, sc, win) in enumerate(zip(res.tracks[q], res.scores[q], res.windows[q]), start=1):
            if tr < 0:
                continue
            rec.results.append({
                "rank": rank, "track": str(lib.paths[tr]), "title": str(lib.titles[tr]),
                "artist": str(lib.artists[tr]), "label": lib.label(int(tr)), "score": round(float(sc), 4),
                "start": round(float(lib.starts[win]), 3), "window": int(win - lib.offsets[tr]),
                "track_duration": round(float(lib.durations[tr]), 3), "key": str(lib.keys[tr])})
        report.recommendations.append(rec)
    if preview is not None:
        t = time.perf_counter()
        out_dir = Path(preview)
        out_dir.mkdir(parents=True, exist_ok=True)
        used: set[str] = set()
        for rec in report.recommendations:
            if not rec.results:
                continue
            top = rec.results[0]
            rec.preview, rec.preview_audio = write_preview(
                Path(rec.video), Path(top["track"]), top["start"], out_dir, duration=rec.duration,
                mode=rc.preview_audio, mix_volume=rc.preview_mix_volume, used=used, notify=notify)
        secs["preview"] = time.perf_counter() - t
    secs["total"] = time.perf_counter() - t0
    report.seconds = secs
    return report


def _has_audio(path: Path) -> bool:
    import av

    try:
        with av.open(str(path)) as c:
            return bool(c.streams.audio)
    except Exception:  # noqa: BLE001 - unreadable: let ffmpeg say why
        return False


def write_preview(video: Path, track: Path, start: float, out_dir: Path, *, duration: float, mode: str = "replace",
                  mix_volume: float = 0.3, used: set[str] | None = None,
                  notify: Callable[[str], None] = say) -> tuple[str, str]:
    """The video with `track` from `start` as its sound (mode replace) or mixed under its own (mix).
    The picture is copied, only the audio is re-encoded. Returns (output path, mode used)."""
    ext = video.suffix.lower() or ".mp4"
    name = f"{video.stem}+{track.stem}{ext}"
    used = used if used is not None else set()
    n = 2
    while name in used:
        name = f"{video.stem}+{track.stem}-{n}{ext}"
        n += 1
    used.add(name)
    out = out_dir / name
    if mode == "mix" and not _has_audio(video):
        notify(f"{video}: no audio stream to mix with; the preview's audio is the track alone")
        mode = "replace"
    args = ["-i", str(video), "-ss", f"{max(0.0, start):.3f}", "-i", str(track)]
    if mode == "mix":
        args += ["-filter_complex",
                 f"[0:a:0]volume={mix_volume:g}[orig];[1:a:0]volume=1[music];"
                 "[orig][music]amix=inputs=2:duration=longest:normalize=0[mixed]",
                 "-map", "0:v:0", "-map", "[mixed]"]
    else:
        args += ["-map", "0:v:0", "-map", "1:a:0"]
    args += ["-c:v", "copy", "-c:a", AUDIO_CODECS.get(ext, "aac"), "-t", f"{duration:.3f}"]
    tmp = out_dir / f".tmp-{uuid.uuid4().hex[:8]}-{name}"
    cmd = [ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y", "-nostdin", *args, str(tmp)]
    try:
        proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=600)
        if proc.returncode != 0:
            why = " ".join((proc.stderr or "").split())[-200:] or f"exit code {proc.returncode}"
            raise MvbindError(f"{out}: ffmpeg could not write the preview ({why})")
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return str(out), mode
