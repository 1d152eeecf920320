"""Stage two's view of a cache namespace: the usable (video, music) pairs, pooled and checked.

`select_namespace` picks the namespace: an explicit fingerprint prefix, else the only namespace
there is, else the one that this config's extractor settings name
(`pipeline.encoders.extractor_settings`, imported lazily; with pretrained weights that needs the
weights file), else it lists the choices in one line. `load_pairs` drops items without audio or
video (and says how many), refuses non-finite embeddings (naming the shard file and row), orders
items by key (so nothing depends on shard file names) and mean-pools both modalities once.
Nothing here opens a media file or a model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from mvbind.cache import CacheError, FeatureCache, Features, Namespace, fingerprint
from mvbind.errors import MvbindError
from mvbind.pipeline.binding.pooling import mean_pool


class PairsError(MvbindError):
    """The namespace's items can't be used for stage two."""


@dataclass
class PairSet:
    """Usable pairs of one namespace, sorted by key; row i of every array is item i."""

    fingerprint: str
    root: Path
    keys: np.ndarray  # (n,) str
    video: np.ndarray  # (n, dv) float32, mean-pooled, L2-normalised
    audio: np.ndarray  # (n, da) float32, mean-pooled, L2-normalised
    music_ids: np.ndarray  # (n,) str, "" = unknown
    manifest_splits: np.ndarray  # (n,) str, "" = none
    shard_of: np.ndarray  # (n,) shard file name
    video_clips: np.ndarray | None = None  # (n, cv, dv) float16, kept for attention pooling
    audio_clips: np.ndarray | None = None  # (n, ca, da) float16
    video_shape: tuple[int, int] = (0, 0)  # (clips, dim) as cached
    audio_shape: tuple[int, int] = (0, 0)
    skipped: dict = field(default_factory=dict)  # reason -> count
    settings: dict = field(default_factory=dict)  # the namespace's extractor settings

    @property
    def encoder(self) -> str:
        enc = self.settings.get("encoder", "")
        return str(enc.get("name", "") if isinstance(enc, dict) else enc)

    def __len__(self) -> int:
        return len(self.keys)

    def subset(self, index: np.ndarray) -> PairSet:
        arrays = ("keys", "video", "audio", "music_ids", "manifest_splits", "shard_of", "video_clips", "audio_clips")
        sub = {k: (None if getattr(self, k) is None else getattr(self, k)[index]) for k in arrays}
        return PairSet(fingerprint=self.fingerprint, root=self.root, video_shape=self.video_shape,
                       audio_shape=self.audio_shape, skipped=dict(self.skipped), settings=self.settings, **sub)


def select_namespace(cache_dir: Path, prefix: str = "", config=None,
                     say: Callable[[str], None] = lambda s: None) -> Namespace:
    """The namespace to read: by fingerprint prefix; else the only one in the cache directory (without
    deriving the settings' namespace, which for ImageBind would hash or miss the weights file); else the one
    this config's extractor settings name; else a one-line error listing the choices."""
    cache = FeatureCache(cache_dir)
    if prefix:
        return cache.find(prefix)
    found = cache.namespaces()
    if not found:
        raise CacheError(f"no cache namespaces in {cache_dir}; run `mvbind extract` (or `mvbind import-features`) "
                         "first, or check paths.cache")
    if len(found) == 1:
        say(f"using cache namespace {found[0].fingerprint[:16]} ({found[0].label}), the only one in {cache_dir}")
        return found[0]
    why = "pipeline.toml's encoder settings name none of them"
    settings = _settings_of(config)
    if settings is not None:
        fp = fingerprint(settings)
        for ns in found:
            if ns.fingerprint == fp:
                say(f"using cache namespace {fp[:16]} ({ns.label}), the one of pipeline.toml's encoder settings")
                return ns
        why = f"pipeline.toml's encoder settings name {fp[:16]}, which is not there"
    choices = ", ".join(f"{ns.fingerprint[:16]} ({ns.label})" for ns in found)
    raise CacheError(f"{len(found)} cache namespaces in {cache_dir} and {why}; choose one with --cache PREFIX: "
                     f"{choices}")


def _settings_of(config) -> dict | None:
    """The config's extractor settings, or None when they can't be had without a download or an encoder."""
    if config is None:
        return None
    try:
        from mvbind.pipeline.encoders.base import extractor_settings

        return extractor_settings(config, download=False, progress=False)
    except Exception:  # noqa: BLE001 - missing weights, an encoder's libraries absent: list the choices instead
        return None


def load_pairs(ns: Namespace, *, keep_clips: bool = False) -> PairSet:
    """All usable pairs of `ns`: both modalities present, finite, sorted by key."""
    # Pool per shard while reading unless the clips are needed (attention pooling): memory then
    # grows with items × dim, not items × clips × dim.
    feats: Features = ns.load(pool=None if keep_clips else mean_pool)
    if len(feats) == 0:
        raise PairsError(f"cache namespace {ns.fingerprint[:16]} ({ns.root}) holds no items; "
                         "run `mvbind extract` into it first")
    no_audio = ~feats.audio_mask.astype(bool)
    no_video = ~feats.video_mask.astype(bool)
    usable = ~no_audio & ~no_video
    skipped = {"no_audio": int(no_audio.sum()), "no_video": int((no_video & ~no_audio).sum())}
    if not usable.any():
        raise PairsError(f"cache namespace {ns.fingerprint[:16]} ({ns.root}): none of its {len(feats)} items has "
                         f"both audio and video ({skipped['no_audio']} without audio); nothing to train or evaluate on")
    keys = feats.keys.astype(str)
    order = np.flatnonzero(usable)
    order = order[np.argsort(keys[order], kind="stable")]
    feats = feats.subset(order)
    video = mean_pool(feats.video) if keep_clips else feats.video
    audio = mean_pool(feats.audio) if keep_clips else feats.audio
    for name, pooled in (("video", video), ("audio", audio)):
        bad = ~np.isfinite(pooled).all(axis=1)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            shard = str(feats.shard_of[i]) if len(feats.shard_of) else "?"
            row = _row_in_shard(ns, shard, str(feats.keys[i]))
            raise PairsError(
                f"{ns.shard_dir / shard} row {row} (key {feats.keys[i]}): {name} embedding has nan or inf "
                f"({int(bad.sum())} such items in all); move the shard to {ns.root / 'quarantine'} and re-run "
                "`mvbind extract` to redo its items")
    return PairSet(
        fingerprint=ns.fingerprint, root=ns.root, keys=feats.keys.astype(str), video=video, audio=audio,
        music_ids=feats.music_ids.astype(str), manifest_splits=feats.splits.astype(str),
        shard_of=feats.shard_of.astype(str) if len(feats.shard_of) else np.full(len(feats), "", object).astype(str),
        video_clips=feats.video if keep_clips else None, audio_clips=feats.audio if keep_clips else None,
        video_shape=tuple(ns.video_shape), audio_shape=tuple(ns.audio_shape), skipped=skipped, settings=ns.settings)


def _row_in_shard(ns: Namespace, shard: str, key: str) -> int | str:
    try:
        with h5py.File(ns.shard_dir / shard, "r") as f:
            keys = list(f["key"].asstr()[:])
        return keys.index(key)
    except Exception:  # noqa: BLE001 - only used to word an error message
        return "?"
