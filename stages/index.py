"""`index`: build a music library file from a folder or manifest of music files.

    music files ─► stage one (the same cache; a track = one item whose audio is windows along it)
                ─► the run's audio head (or ImageBind's raw space: zero-shot) ─► one library file

Tracks go through `stages.extract.extract` with a window layout, into the track namespace of
the encoder's settings + that layout (pipeline.windows), so re-indexing the same files extracts
nothing. Their windows are read back from the cache, pooled and projected exactly as stage two
pools and projects audio, L2-normalised and written with the tracks' metadata (path, title and
artist from tags, duration, window starts) to one library file (pipeline.library). Above
`library.faiss_threshold` windows (or with --index faiss) a FAISS index is built into the same
file and its recall@10 against exact search is measured and printed.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from mvbind.cache import FeatureCache
from mvbind.pipeline.config import Config
from mvbind.pipeline.console import say
from mvbind.pipeline.encoders.base import extractor_settings
from mvbind.pipeline.library.locate import library_path
from mvbind.pipeline.library.projector import load_projector
from mvbind.pipeline.library.store import SUFFIX, LibraryError, build_faiss, read_header, read_tags, write_library
from mvbind.pipeline.library.windows import WindowLayout
from mvbind.pipeline.media.inputs import AUDIO_EXTENSIONS, InputItem, list_inputs
from mvbind.pipeline.runner import run_extraction

MANIFEST_NAMES = ("manifest.csv", "manifest.jsonl")  # beside the music: not listed as skipped files


# -- inputs and paths ---------------------------------------------------------------------------
def library_inputs(source: str | Path) -> tuple[list[InputItem], list[tuple[str, str]]]:
    """Audio files of a folder (recursive) or manifest, and the folder's other files with the reason
    they are left out."""
    source = Path(source)
    items = list_inputs(source, AUDIO_EXTENSIONS)
    skipped: list[tuple[str, str]] = []
    if source.is_dir():
        for dirpath, dirnames, filenames in os.walk(source, followlinks=True):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for name in sorted(filenames):
                ext = os.path.splitext(name)[1].lower()
                if name.startswith(".") or ext in AUDIO_EXTENSIONS or name.lower() in MANIFEST_NAMES:
                    continue
                skipped.append((os.path.join(dirpath, name),
                                f"not an audio file ({ext or 'no extension'}; indexed: "
                                f"{' '.join(AUDIO_EXTENSIONS)})"))
    return items, skipped


def _claim(target: Path, overwrite: bool) -> None:
    if not target.exists():
        return
    if not overwrite:
        raise LibraryError(f"{target} already exists; pass --overwrite to rebuild it or choose another --name/--out")
    if target.is_dir():
        raise LibraryError(f"{target} is a folder; choose a library file name with --out")
    if not target.name.endswith(SUFFIX):
        try:
            read_header(target)
        except LibraryError:
            raise LibraryError(f"{target} is not an mvbind library file; refusing to overwrite it with --overwrite "
                               f"(library files end in {SUFFIX})") from None


# -- the stage ----------------------------------------------------------------------------------
@dataclass
class IndexSummary:
    library: str
    namespace: str
    projector: str
    tracks: int = 0
    windows: int = 0
    dim: int = 0
    layout: dict = field(default_factory=dict)
    inputs: int = 0
    extracted: int = 0
    reused: int = 0
    duplicates: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    search: str = "exact"
    faiss: dict | None = None
    threshold: int = 0
    tagged: int = 0
    seconds: dict = field(default_factory=dict)

    def lines(self) -> list[str]:
        lay = self.layout
        out = [f"library {self.library}: {self.tracks} tracks, {self.windows} windows "
               f"({lay.get('length', 0):g} s every {lay.get('hop', 0):g} s, at most {lay.get('max_windows')} a track), "
               f"{self.dim}-d; {self.tagged} with title/artist tags",
               f"projector: {self.projector}",
               f"tracks namespace {self.namespace[:16]}: {self.inputs} inputs, extracted {self.extracted}, "
               f"reused from cache {self.reused}, duplicate content {self.duplicates}, skipped {len(self.skipped)}"]
        if self.faiss:
            f = self.faiss
            out.append(f"search index: FAISS {f['kind']}, nprobe {f['nprobe']}: "
                       f"recall@{f['k']} {f['recall_at_10']:.3f} "
                       f"against exact search on {f['probe_queries']} probe queries (target {f['target_recall']}); "
                       f"{f['ms_per_query']:.2f} ms/query vs exact {f['exact_ms_per_query']:.2f} ms; "
                       f"built in {f['seconds']:.1f}s")
        else:
            out.append(f"search index: exact ({self.windows} windows; FAISS is built above library.faiss_threshold "
                       f"= {self.threshold} or with --index faiss)")
        if self.skipped:
            out.append(f"skipped {len(self.skipped)} file(s):")
            for path, reason in self.skipped[:20]:
                out.append(f"  {os.fsencode(path).decode('utf-8', 'backslashreplace')}: {reason}")
            if len(self.skipped) > 20:
                out.append(f"  … {len(self.skipped) - 20} more")
        s = self.seconds
        total = s.get("total", 0.0)
        out.append(f"time {total:.1f}s: extract {s.get('extract', 0):.1f}s, project {s.get('project', 0):.1f}s, "
                   f"tags {s.get('tags', 0):.1f}s, faiss {s.get('faiss', 0):.1f}s, write {s.get('write', 0):.1f}s; "
                   f"{self.tracks / total if total else 0:.1f} tracks/s, {self.windows / total if total else 0:.0f} "
                   "windows/s")
        return out


def index(config: Config, source: str | Path, *, run: str | Path | None = None, out: str | Path | None = None,
          name: str | None = None, overwrite: bool = False, index_kind: str | None = None, progress: bool = True,
          notify: Callable[[str], None] = say) -> IndexSummary:
    """Build a library file from the music files of `source`; returns the summary."""
    t0 = time.perf_counter()
    secs: dict[str, float] = {}
    layout = WindowLayout.from_config(config)
    video_settings = extractor_settings(config, download=True, progress=progress)
    projector = load_projector(config, run, video_settings)  # refuse a mismatched run before any work
    target = library_path(config, out, name, source)
    _claim(target, overwrite)
    index_kind = index_kind or config.library.index
    items, skipped = library_inputs(source)
    if not items:
        raise LibraryError(f"{source}: no music files to index (extensions {' '.join(AUDIO_EXTENSIONS)})"
                           + (f"; {len(skipped)} other file(s) left out" if skipped else ""))

    t = time.perf_counter()
    ext = run_extraction(config, items, require=("audio",), extensions=AUDIO_EXTENSIONS, progress=progress,
                         windows=layout)
    secs["extract"] = time.perf_counter() - t
    ns = FeatureCache(config.cache_dir).find(ext.namespace)
    reasons = {p: r for p, r in ext.failed}
    earlier = {f.path: f.reason for f in ns.failures()}
    first_path: dict[str, str] = {}
    for it in items:
        key = ext.item_keys.get(it.path)
        if key and key not in first_path and it.path not in reasons:
            first_path[key] = it.path
    wins = ns.load_windows(list(first_path))
    row_of = {str(k): i for i, k in enumerate(wins.keys)}
    for it in items:
        key = ext.item_keys.get(it.path)
        if it.path in reasons:
            skipped.append((it.path, reasons[it.path]))
        elif not key:
            skipped.append((it.path, earlier.get(it.path, "not read") +
                            (" (failed in an earlier run; --retry-failed retries)" if it.path in earlier else "")))
        elif first_path.get(key) == it.path and key not in row_of:
            skipped.append((it.path, "not in the cache (another partition: index every partition first)"
                            if config.extract.num_shards > 1 else "not in the cache (damaged shard?)"))
    keys = [k for k in first_path if k in row_of and wins.counts[row_of[k]] > 0]
    for k in first_path:
        if k in row_of and wins.counts[row_of[k]] == 0:
            skipped.append((first_path[k], "cached without windows"))
    if not keys:
        item_paths = {it.path for it in items}
        why = next((s for s in skipped if s[0] in item_paths), skipped[0] if skipped else None)
        raise LibraryError(f"{source}: none of its {len(items)} music file(s) could be indexed"
                           + (f" ({why[0]}: {why[1]})" if why else ""))
    rows = np.array([row_of[k] for k in keys], np.int64)
    counts = wins.counts[rows]
    offsets = np.zeros(len(rows) + 1, np.int64)
    np.cumsum(counts, out=offsets[1:])
    take = np.concatenate([np.arange(wins.offsets[r], wins.offsets[r + 1]) for r in rows])
    raw, starts = wins.audio[take], wins.starts[take]

    t = time.perf_counter()
    vectors = projector.windows(raw).astype(np.float32)
    secs["project"] = time.perf_counter() - t
    t = time.perf_counter()
    paths = [os.path.abspath(first_path[k]) for k in keys]  # the library is used from other folders (serve)
    tags = [read_tags(p) for p in tqdm(paths, desc="tags", unit="track", disable=not progress or len(paths) < 200)]
    secs["tags"] = time.perf_counter() - t

    use_faiss = index_kind == "faiss" or (index_kind == "auto" and len(vectors) > config.library.faiss_threshold)
    faiss_index, faiss_info = None, None
    if use_faiss:
        t = time.perf_counter()
        lib = config.library
        faiss_index, faiss_info = build_faiss(vectors, offsets, nlist=lib.faiss_nlist,
                                              target_recall=lib.faiss_target_recall, queries=lib.faiss_queries,
                                              seed=lib.seed, chunk_mb=config.recommend.chunk_mb)
        secs["faiss"] = time.perf_counter() - t
        notify(f"FAISS {faiss_info['kind']}: nprobe {faiss_info['nprobe']} gives recall@{faiss_info['k']} "
               f"{faiss_info['recall_at_10']:.3f} against exact search ({faiss_info['probe_queries']} probe queries)")
    enc = video_settings["encoder"]
    meta = {
        "created": time.time(),
        "encoder_fingerprint": projector.fingerprint,
        "encoder_description": f"{enc['name']}" + (f" {enc.get('arch')}, {enc.get('weights')}"
                                                   if enc["name"] == "imagebind" else ""),
        "track_namespace": ns.fingerprint,
        "cache_dir": str(config.cache_dir),
        "windows_layout": layout.to_dict(),
        "projector": projector.identity,
        "source": str(source),
        "faiss": faiss_info,
    }
    t = time.perf_counter()
    write_library(target, meta=meta, keys=keys, paths=paths, titles=[g.title for g in tags],
                  artists=[g.artist for g in tags], durations=wins.duration[rows], offsets=offsets, starts=starts,
                  vectors=vectors, raw=raw if projector.kind == "run" else None, raw_space=enc["name"],
                  faiss_index=faiss_index)
    secs["write"] = time.perf_counter() - t
    secs["total"] = time.perf_counter() - t0
    return IndexSummary(
        library=str(target), namespace=ns.fingerprint, projector=projector.describe(), tracks=len(keys),
        windows=len(vectors), dim=int(vectors.shape[1]), layout=layout.to_dict(), inputs=len(items),
        extracted=ext.extracted, reused=ext.reused, duplicates=ext.duplicates, skipped=skipped,
        search="faiss" if use_faiss else "exact", faiss=faiss_info, threshold=config.library.faiss_threshold,
        tagged=sum(1 for g in tags if g.title or g.artist), seconds=secs)
