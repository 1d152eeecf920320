"""Stage two, evaluation: runs and training-free baselines on one gallery, in one table.

For each run: its recorded cache fingerprint, split and music groups give the gallery (the
`eval.split` part of the run's own split, never a re-derived one); its best checkpoint
embeds both sides; ranks are exact and computed in blocks (`pipeline.metrics`). Each run's row
carries the settings in which the evaluated runs differ (a `settings` column). Baselines,
once per distinct gallery:
  - chance: the exact expectation of a random ranking with the gallery's group sizes;
  - zero-shot ImageBind: raw cosine of the mean-pooled, normalised cached audio and video
    embeddings (ImageBind's two spaces are already bound), no training at all. (Named after
    the namespace's encoder; skipped when audio and video have different sizes.)
Without runs, the gallery is the namespace's split under the config's split rule.

Writes <eval dir>/metrics.json, table.md, recall_at_k.png and prints the table.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mvbind.cache import CacheError, FeatureCache, settings_label
from mvbind.pipeline.binding.checkpoint import load_checkpoint
from mvbind.pipeline.binding.metrics import chance, recall_curve, retrieval_ranks, summarize
from mvbind.pipeline.binding.pairs import PairSet, load_pairs, select_namespace
from mvbind.pipeline.binding.projector import ProjectorSpec
from mvbind.pipeline.binding.report import differing_settings, markdown_table, plot_recall
from mvbind.pipeline.binding.runs import RunError, _read, claim_run_dir, find_run, run_name, write_json
from mvbind.pipeline.binding.training import encode, make_split, music_groups, relabel, skipped_note
from mvbind.pipeline.config import Config, expand_path
from mvbind.pipeline.console import say


@dataclass
class Gallery:
    pairs: PairSet
    index: np.ndarray  # rows of `pairs` in the gallery
    groups: np.ndarray  # (len(index),) labels 0..G-1
    split: str
    source: str  # where the split came from

    @property
    def key(self) -> str:
        keys = "\n".join(self.pairs.keys[self.index].tolist())
        blob = f"{self.pairs.fingerprint}\n{keys}\n{self.groups.tobytes().hex()}"
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


class _PairCache:
    """Load each namespace once, even when several runs share it."""

    def __init__(self, config: Config, keep_clips: bool):
        self.config = config
        self.keep_clips = keep_clips
        self.loaded: dict[str, PairSet] = {}

    def by_fingerprint(self, fingerprint: str, recorded_dir: str | None = None) -> PairSet:
        if fingerprint not in self.loaded:
            dirs = [self.config.cache_dir] + ([Path(recorded_dir)] if recorded_dir else [])
            last: Exception | None = None
            for d in dirs:
                try:
                    ns = FeatureCache(d).find(fingerprint)
                    break
                except CacheError as err:
                    last = err
            else:
                raise CacheError(f"cache namespace {fingerprint[:16]} not found in {', '.join(map(str, dirs))} "
                                 f"({last}); point paths.cache at the cache the run was trained on")
            self.loaded[fingerprint] = load_pairs(ns, keep_clips=self.keep_clips)
            if note := skipped_note(self.loaded[fingerprint]):
                say(f"cache {fingerprint[:16]}: {note}")
        return self.loaded[fingerprint]


def run_gallery(run_dir: Path, pairs: PairSet, split: str, notify: Callable[[str], None]) -> Gallery:
    """The run's recorded `split` items and groups, located in the loaded pairs."""
    recorded = _read(run_dir, "split.json")
    keys = np.asarray(recorded.get(split, []), dtype=str)
    if not len(keys):
        raise RunError(f"{run_dir / 'split.json'}: the run's {split} split is empty; nothing to evaluate "
                       f"(evaluate another split with --split)")
    pos = np.searchsorted(pairs.keys, keys)
    pos = np.minimum(pos, len(pairs.keys) - 1)
    found = pairs.keys[pos] == keys
    if not found.all():
        notify(f"warning: {int((~found).sum())} of {len(keys)} {split} items recorded in {run_dir.name} are no "
               f"longer in the cache (quarantined shard?); evaluating on the {int(found.sum())} present")
    index = np.sort(pos[found])
    label_of: dict[str, int] = {}
    for g, members in enumerate(_read(run_dir, "groups.json").get("groups", [])):
        for k in members:
            label_of[k] = g
    base = len(label_of) + 1
    raw = np.array([label_of.get(k, base + i) for i, k in enumerate(pairs.keys[index])], np.int64)
    return Gallery(pairs, index, relabel(raw), split, f"run {run_dir.name}")


def evaluate(config: Config, runs: list[str | Path] | tuple = (), *, cache: str | None = None,
             split: str | None = None, name: str | None = None, out: str | Path | None = None,
             overwrite: bool = False, baselines: bool | None = None,
             notify: Callable[[str], None] = say) -> tuple[Path, dict]:
    """Evaluate runs (and baselines); returns the report directory and the metrics written there."""
    split = split or config.eval.split
    baselines = config.eval.baselines if baselines is None else baselines
    ks = tuple(config.eval.ks)
    max_k = max(50, max(ks))
    if out is not None:
        out_dir = Path(out)
    else:
        root = expand_path(config.eval.out) if config.eval.out else config.runs_dir / "_evals"
        out_dir = root / run_name(name or time.strftime("eval-%Y%m%d-%H%M%S"))
    if out_dir.exists() and not overwrite:
        raise RunError(f"{out_dir} already exists; choose another --name/--out or pass --overwrite to replace it")
    if not runs and not baselines:
        raise RunError("nothing to evaluate: give one or more runs, or leave the baselines on")

    run_dirs = [find_run(config, r) for r in runs]
    specs = {rd: ProjectorSpec.from_dict(_read(rd, "model.json")) for rd in run_dirs}
    distinct = dict(zip(run_dirs, differing_settings([run_settings(rd) for rd in run_dirs])))
    store = _PairCache(config, keep_clips=any(s.pooling == "attention" for s in specs.values()))
    rows: list[dict] = []
    galleries: dict[str, Gallery] = {}
    t_all = time.perf_counter()
    for rd in run_dirs:
        recorded = _read(rd, "cache.json")
        if cache:  # an explicit namespace: the checkpoint must belong to it
            ns_pairs = store.by_fingerprint(_namespace_fp(config, cache))
        else:
            ns_pairs = store.by_fingerprint(recorded["fingerprint"], recorded.get("cache_dir"))
        model, meta = load_checkpoint(rd / "best.pt", fingerprint=ns_pairs.fingerprint,
                                      audio_shape=ns_pairs.audio_shape, video_shape=ns_pairs.video_shape,
                                      spec=specs[rd])
        if not (rd / "final_metrics.json").exists():
            notify(f"warning: {rd.name} has no final_metrics.json (training did not finish); "
                   f"evaluating its best checkpoint so far (epoch {meta.get('epoch')})")
        gal = run_gallery(rd, ns_pairs, split, notify)
        galleries.setdefault(gal.key, gal)
        t0 = time.perf_counter()
        if specs[rd].pooling == "attention":
            v_in, a_in = ns_pairs.video_clips[gal.index], ns_pairs.audio_clips[gal.index]
        else:
            v_in, a_in = ns_pairs.video[gal.index], ns_pairs.audio[gal.index]
        ve, ae = encode(model, v_in, a_in)
        rows.append(_row(rd.name, "run", gal, ve, ae, ks, max_k, config, extra={
            "run_dir": str(rd), "epoch": meta.get("epoch"), "spec": specs[rd].to_dict(), "settings": distinct[rd]},
            t0=t0))
    if not run_dirs:
        prefix = cache if cache is not None else config.train.cache
        ns = select_namespace(config.cache_dir, prefix, config, say=notify)
        pairs = load_pairs(ns)
        if note := skipped_note(pairs):
            notify(f"cache {ns.fingerprint[:16]}: {note}")
        groups = music_groups(pairs, config)
        sp = make_split(pairs, groups, config)
        index = sp.indices(split)
        if not len(index):
            raise RunError(f"the {split} split of cache {ns.fingerprint[:16]} is empty ({sp.counts()}); "
                           "use --split or check train.val_fraction/test_fraction or the manifest")
        gal = Gallery(pairs, index, relabel(groups.labels[index]), split, f"{sp.rule} split of the namespace")
        galleries[gal.key] = gal
    many = len(galleries) > 1
    if many:  # say which gallery each run was ranked on
        for row in rows:
            row["name"] += f" [{row['gallery_id'][:6]}]"
    if baselines:
        for gkey, gal in galleries.items():
            suffix = f" [{gkey[:6]}]" if many else ""
            n = len(gal.index)
            c = chance(gal.groups, n, ks, max_k=max_k)
            rows.append({"name": "chance" + suffix, "kind": "chance", "gallery": n, "split": gal.split,
                         "gallery_id": gkey, "fingerprint": gal.pairs.fingerprint,
                         "video_to_music": {k: v for k, v in c.items() if k != "curve"},
                         "music_to_video": {k: v for k, v in c.items() if k != "curve"},
                         "curves": {"video_to_music": c["curve"], "music_to_video": c["curve"]}})
            if gal.pairs.video.shape[1] != gal.pairs.audio.shape[1]:
                notify(f"zero-shot baseline skipped: audio ({gal.pairs.audio.shape[1]}-d) and video "
                       f"({gal.pairs.video.shape[1]}-d) embeddings are not in one space")
                continue
            t0 = time.perf_counter()
            encoder = gal.pairs.encoder
            label = "zero-shot ImageBind" if encoder == "imagebind" else f"zero-shot {encoder or 'raw'} cosine"
            rows.append(_row(label + suffix, "zero_shot", gal, gal.pairs.video[gal.index],
                             gal.pairs.audio[gal.index], ks, max_k, config, t0=t0))
    metrics = {
        "split": split, "ks": list(ks), "rows": rows,
        "galleries": {k: {"size": len(g.index), "fingerprint": g.pairs.fingerprint, "source": g.source,
                          "groups": _group_note(g.groups)} for k, g in galleries.items()},
        "seconds": round(time.perf_counter() - t_all, 3),
        "ties": "counted against the query (a negative scoring exactly as high as the best positive ranks above it)",
    }
    claim_run_dir(out_dir, overwrite, markers=("metrics.json", "table.md"))
    write_json(out_dir / "metrics.json", metrics)
    table = markdown_table(rows, ks)
    notes = [f"- gallery {k[:6]} ({g['source']}): {g['size']} items, cache {g['fingerprint'][:16]}; "
             f"{g['groups']['groups']} shared-track groups covering {g['groups']['items_in_groups']} items "
             f"(largest {g['groups']['largest']}); any member of the right group counts as a hit"
             for k, g in metrics["galleries"].items()]
    (out_dir / "table.md").write_text(f"# Retrieval on the {split} split\n\n{table}\n" + "\n".join(notes) +
                                      f"\n- ties are {metrics['ties']}\n")
    plot_recall(rows, out_dir / "recall_at_k.png", title=f"Recall@K, {split} split", ks=ks)
    return out_dir, metrics


# Settings that change how fast a run trains, not what it learns: left out of the comparison.
NOT_COMPARED = ("cache", "threads", "device")


def run_settings(run_dir: Path) -> dict:
    """What may tell a run from another: its features (namespace label and fingerprint) and its [train]
    settings (config.json), but those that only change speed (NOT_COMPARED)."""
    cache = _read(run_dir, "cache.json")
    train = _read(run_dir, "config.json").get("train", {})
    return {"features": settings_label(cache.get("settings", {})), "cache": str(cache.get("fingerprint", ""))[:8],
            **{k: v for k, v in train.items() if k not in NOT_COMPARED}}


def _namespace_fp(config: Config, prefix: str) -> str:
    return FeatureCache(config.cache_dir).find(prefix).fingerprint


def _group_note(labels: np.ndarray) -> dict:
    counts = np.bincount(labels) if len(labels) else np.zeros(0, np.int64)
    shared = counts[counts > 1]
    return {"groups": int(len(shared)), "items_in_groups": int(shared.sum()),
            "largest": int(shared.max()) if len(shared) else 1}


def _row(name: str, kind: str, gal: Gallery, video, audio, ks, max_k: int, config: Config, *, t0: float,
         extra: dict | None = None) -> dict:
    r_v2m, r_m2v = retrieval_ranks(video, audio, gal.groups, chunk_mb=config.eval.chunk_mb)
    return {"name": name, "kind": kind, "gallery": int(len(gal.index)), "split": gal.split, "gallery_id": gal.key,
            "fingerprint": gal.pairs.fingerprint, "video_to_music": summarize(r_v2m, ks),
            "music_to_video": summarize(r_m2v, ks),
            "curves": {"video_to_music": recall_curve(r_v2m, max_k), "music_to_video": recall_curve(r_m2v, max_k)},
            "seconds": round(time.perf_counter() - t0, 3), **(extra or {})}
