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

import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import click
import numpy as np
import torch
from tqdm import tqdm

from cache import FeatureCache, fingerprint
from pipeline.checkpoint import load_checkpoint
from pipeline.cliutil import config_options, one_line_errors, resolve_config
from pipeline.config import Config, expand_path
from pipeline.encoders import extractor_settings
from pipeline.errors import MvbindError
from pipeline.inputs import AUDIO_EXTENSIONS, InputItem, list_inputs
from pipeline.library import SUFFIX, LibraryError, build_faiss, read_header, read_tags, write_library
from pipeline.pooling import mean_pool
from pipeline.projector import BindingModel, ProjectorSpec
from pipeline.windows import WindowLayout
from stages.evaluate import find_run
from stages.extract import extract
from stages.train import RunError, say

MANIFEST_NAMES = ("manifest.csv", "manifest.jsonl")  # beside the music: not listed as skipped files


# -- the projector: a run's heads, or the encoder's raw space ----------------------------------
@dataclass
class Projector:
    """How audio windows and videos get into the library's space."""

    kind: str  # "run" | "zero-shot"
    identity: dict  # stored in the library; a library is only searched with the same identity
    fingerprint: str  # the video namespace (encoder settings) the projector belongs to
    model: BindingModel | None = None
    spec: ProjectorSpec | None = None

    @property
    def dim(self) -> int:
        return int(self.spec.embed_dim) if self.spec else int(self.identity["dim"])

    def describe(self) -> str:
        if self.kind == "zero-shot":
            return (f"zero-shot: {self.identity['space']} (no trained projector; windows and videos compared by "
                    "raw cosine)")
        sha = self.identity["checkpoint_sha256"][:12]
        return f"run {self.identity['run']} (checkpoint {sha}…, epoch {self.identity.get('epoch')})"

    @torch.no_grad()
    def windows(self, audio: np.ndarray, *, batch: int = 8192) -> np.ndarray:
        """(W, dim) per-window embeddings -> (W, E) L2-normalised vectors: each window is one clip,
        pooled and projected as stage two does with an item's audio clips."""
        clips = audio[:, None, :]
        if self.model is None:
            return mean_pool(clips)
        out = []
        for a in range(0, len(clips), batch):
            part = clips[a:a + batch]
            x = torch.from_numpy(part) if self.spec.pooling == "attention" else torch.from_numpy(mean_pool(part))
            out.append(self.model.encode_audio(x).numpy())
        return np.concatenate(out) if out else np.zeros((0, self.dim), np.float32)

    @torch.no_grad()
    def videos(self, clips: np.ndarray) -> np.ndarray:
        """(n, clips, dim) cached per-clip video embeddings -> (n, E) L2-normalised queries."""
        if self.model is None:
            return mean_pool(clips)
        x = torch.from_numpy(clips) if self.spec.pooling == "attention" else torch.from_numpy(mean_pool(clips))
        return self.model.encode_video(x).numpy()


def settings_diff(a: dict, b: dict, names: tuple[str, str] = ("run", "these settings"), limit: int = 3) -> str:
    """The first differing keys of two settings dicts, as 'key: x (a) vs y (b)'."""
    def flat(d, prefix=""):
        out = {}
        for k, v in d.items():
            if isinstance(v, dict):
                out.update(flat(v, f"{prefix}{k}."))
            else:
                out[f"{prefix}{k}"] = v
        return out

    fa, fb = flat(a), flat(b)
    diffs = [f"{k}: {fa.get(k, '—')} ({names[0]}) vs {fb.get(k, '—')} ({names[1]})"
             for k in sorted(set(fa) | set(fb)) if fa.get(k) != fb.get(k) and not k.startswith("shapes")]
    more = f" and {len(diffs) - limit} more" if len(diffs) > limit else ""
    return "; ".join(diffs[:limit]) + more if diffs else "settings differ"


def load_projector(config: Config, run: str | Path | None, video_settings: dict) -> Projector:
    """The run's projector (checked against these encoder settings), or the zero-shot identity."""
    fp = fingerprint(video_settings)
    shapes = video_settings["shapes"]
    enc = video_settings["encoder"]
    if run is None:
        if shapes["audio"][1] != shapes["video"][1]:
            raise MvbindError(f"zero-shot needs audio and video embeddings in one space; encoder {enc['name']} has "
                              f"{shapes['audio'][1]}-d audio and {shapes['video'][1]}-d video: pass --run RUN "
                              "(a run trained with `cli.py train`)")
        space = "ImageBind's raw audio-vision space" if enc["name"] == "imagebind" else f"raw {enc['name']} space"
        return Projector("zero-shot", {"kind": "zero-shot", "space": space, "dim": int(shapes["audio"][1])}, fp)
    rd = find_run(config, run)
    try:
        cache = json.loads((rd / "cache.json").read_text())
        spec = ProjectorSpec.from_dict(json.loads((rd / "model.json").read_text()))
    except (OSError, ValueError, TypeError) as err:
        raise RunError(f"{rd}: cache.json/model.json unreadable ({err}); the run directory is incomplete") from None
    if cache.get("fingerprint") != fp:
        why = settings_diff(cache.get("settings", {}), video_settings)
        raise RunError(f"run {rd.name} was trained on cache {str(cache.get('fingerprint'))[:16]}, these encoder "
                       f"settings give {fp[:16]} ({why}); use the run's encoder settings (--arch/--weights/--set)")
    model, meta = load_checkpoint(rd / "best.pt", fingerprint=fp, audio_shape=tuple(shapes["audio"]),
                                  video_shape=tuple(shapes["video"]), spec=spec)
    with open(rd / "best.pt", "rb") as f:
        sha = hashlib.file_digest(f, "sha256").hexdigest()
    identity = {"kind": "run", "run": rd.name, "run_dir": str(rd.resolve()), "checkpoint_sha256": sha,
                "epoch": meta.get("epoch"), "spec": spec.to_dict(), "trained_on": fp, "dim": spec.embed_dim}
    return Projector("run", identity, fp, model.eval(), spec)


def check_compatible(library: Path, header: dict, projector: Projector) -> None:
    """Refuse, in one line, a library built for other encoder settings or another projector."""
    lib_fp = header.get("encoder_fingerprint", "")
    built = header.get("projector", {})
    if lib_fp != projector.fingerprint:
        raise LibraryError(
            f"{library}: built for encoder namespace {lib_fp[:16]} ({header.get('encoder_description', '?')}), "
            f"{'run ' + projector.identity['run'] + ' uses' if projector.kind == 'run' else 'these settings use'} "
            f"{projector.fingerprint[:16]}; use the library's encoder settings or re-index with `cli.py index`")
    if built.get("kind") != projector.kind:
        if built.get("kind") == "zero-shot":
            raise LibraryError(f"{library}: a zero-shot library (raw encoder space) can't be searched with run "
                               f"{projector.identity['run']}'s heads; re-index with --run {projector.identity['run']}"
                               " or leave out --run")
        raise LibraryError(f"{library}: built with run {built.get('run')}'s audio head; pass --run {built.get('run')} "
                           "(or re-index without --run for zero-shot use)")
    if projector.kind == "run" and built.get("checkpoint_sha256") != projector.identity["checkpoint_sha256"]:
        same_spec = built.get("spec") == projector.identity["spec"]
        what = "another checkpoint" if same_spec else "a different projector head"
        raise LibraryError(f"{library}: built with run {built.get('run')} (checkpoint "
                           f"{str(built.get('checkpoint_sha256'))[:12]}…), {what} than run "
                           f"{projector.identity['run']} ({projector.identity['checkpoint_sha256'][:12]}…); "
                           f"re-index with --run {projector.identity['run']}")


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


def library_path(config: Config, out: str | Path | None, name: str | None, source: str | Path) -> Path:
    if out:
        return Path(out)
    base = expand_path(config.library.dir)
    src = Path(source)
    stem = src.name if src.is_dir() else src.stem
    if not src.is_dir() and stem.lower() == "manifest":  # library/manifest.csv -> "library"
        stem = src.resolve().parent.name
    return base / f"{name or stem or 'library'}{SUFFIX}"


def resolve_library(config: Config, value: str | Path) -> Path:
    """A library file path, or a name in library.dir."""
    path = Path(value)
    if path.exists():
        return path
    base = expand_path(config.library.dir)
    for candidate in (base / f"{value}{SUFFIX}", base / str(value)):
        if candidate.exists():
            return candidate
    raise LibraryError(f"library {str(value)!r} not found (no file {path}, none named {value}{SUFFIX} in {base}); "
                       "build it with `cli.py index MUSIC_FOLDER --name NAME`")


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
    ext = extract(config, items, require=("audio",), extensions=AUDIO_EXTENSIONS, progress=progress, windows=layout)
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
    paths = [first_path[k] for k in keys]
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
                  vectors=vectors, faiss_index=faiss_index)
    secs["write"] = time.perf_counter() - t
    secs["total"] = time.perf_counter() - t0
    return IndexSummary(
        library=str(target), namespace=ns.fingerprint, projector=projector.describe(), tracks=len(keys),
        windows=len(vectors), dim=int(vectors.shape[1]), layout=layout.to_dict(), inputs=len(items),
        extracted=ext.extracted, reused=ext.reused, duplicates=ext.duplicates, skipped=skipped,
        search="faiss" if use_faiss else "exact", faiss=faiss_info, threshold=config.library.faiss_threshold,
        tagged=sum(1 for g in tags if g.title or g.artist), seconds=secs)


@click.command("index")
@click.argument("source", type=click.Path(path_type=Path))
@config_options
@click.option("--run", default=None, help="Run whose audio head projects the windows (name under paths.runs or a "
                                          "run directory); without it: zero-shot, the encoder's raw space.")
@click.option("--name", default=None, help="Library name: writes <library.dir>/NAME.mvlib.h5 (default: SOURCE's name).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Library file (overrides --name).")
@click.option("--overwrite", is_flag=True, help="Replace an existing library file.")
@click.option("--index", "index_kind", type=click.Choice(["auto", "exact", "faiss"]), default=None,
              help="Search index (library.index): auto builds FAISS above library.faiss_threshold windows.")
@click.option("--hop", type=float, default=None, help="Seconds between windows (library.hop).")
@click.option("--cache-dir", help="Feature cache directory (paths.cache).")
@click.option("--arch", help="ImageBind architecture: huge, small or tiny (encoder.arch).")
@click.option("--weights", help='Weights file, or "random" for random init (encoder.weights).')
@click.option("--device", help="auto, cpu, cuda or cuda:N (encoder.device).")
@click.option("--batch-size", type=int, help="Tracks per forward pass (encoder.batch_size).")
@click.option("--workers", type=int, help="Decoding worker processes (extract.workers).")
@click.option("--retry-failed", is_flag=True, default=None, help="Retry files that failed in earlier runs.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@one_line_errors
def index_command(source, config_path, sets, run, name, out, overwrite, index_kind, hop, cache_dir, arch, weights,
                  device, batch_size, workers, retry_failed, quiet):
    """Build a music library from SOURCE (a folder of mp3/ogg/wav/flac/m4a/opus files, or a CSV/JSONL manifest)."""
    config = resolve_config(config_path, sets, {
        "paths.cache": cache_dir, "encoder.arch": arch, "encoder.weights": weights, "encoder.device": device,
        "encoder.batch_size": batch_size, "extract.workers": workers, "library.hop": hop,
        "extract.retry_failed": retry_failed})
    summary = index(config, source, run=run, out=out, name=name, overwrite=overwrite, index_kind=index_kind,
                    progress=not quiet)
    for line in summary.lines():
        click.echo(line)
