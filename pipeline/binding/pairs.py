"""Stage two's view of a cache namespace: the usable (video, music) pairs, pooled and checked.

`select_namespace` picks the namespace: an explicit fingerprint prefix, else the one that
this config's extractor settings name (`pipeline.encoders.extractor_settings`, imported
lazily; with pretrained weights that needs the weights file), else the only namespace there
is. `load_pairs` drops items without audio or video (and says how many), refuses non-finite
embeddings (naming the shard file and row), orders items by key (so nothing depends on shard
file names) and mean-pools both modalities once. Nothing here opens a media file or a model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from mvbind.cache import CacheError, FeatureCache, Features, Namespace
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
    """The namespace to read: by fingerprint prefix, else by the config's extractor settings,
    else the only one in the cache directory."""
    cache = FeatureCache(cache_dir)
    if prefix:
        return cache.find(prefix)
    reason = "no config given"
    if config is not None:
        try:
            from mvbind.pipeline.encoders.base import extractor_settings
        except ImportError as err:
            reason = f"extractor settings unavailable ({err})"
        else:
            try:
                settings = extractor_settings(config, download=False, progress=False)
            except MvbindError as err:
                reason = str(err)
            except Exception as err:  # noqa: BLE001 - fall back to the only namespace, but say why
                reason = f"{type(err).__name__}: {err}"
            else:
                try:
                    return cache.get(settings)
                except CacheError as err:
                    known = ", ".join(ns.fingerprint[:16] for ns in cache.namespaces())
                    if known:
                        raise CacheError(f"{err} (namespaces there: {known}; pick one with --cache PREFIX)") from None
                    raise
    found = cache.namespaces()
    if len(found) == 1:
        say(f"using cache namespace {found[0].fingerprint[:16]}, the only one in {cache_dir} "
            f"(not derived from the settings: {reason})")
        return found[0]
    if not found:
        raise CacheError(f"no cache namespaces in {cache_dir}; run `mvbind extract` first or check paths.cache")
    known = ", ".join(ns.fingerprint[:16] for ns in found)
    raise CacheError(f"{len(found)} cache namespaces in {cache_dir} ({known}) and the settings can't pick one "
                     f"({reason}); choose with --cache PREFIX")


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
