"""Reading the feature cache from a notebook: the namespace of a config, per-item arrays with keys and paths.

    cache = open_cache(config)                      # a FeatureCache: .namespaces(), .find(prefix)
    feats = read_features(config)                   # mean-pooled per item, streamed shard by shard
    feats.keys, feats.paths, feats.video, feats.audio   # (n,) str, (n,) str, (n, dim), (n, dim)
"""

from __future__ import annotations

from pathlib import Path

from mvbind.cache import FeatureCache, Features
from mvbind.pipeline.binding.pairs import select_namespace
from mvbind.pipeline.binding.pooling import mean_pool
from mvbind.pipeline.config import Config


def open_cache(where: Config | str | Path) -> FeatureCache:
    """The feature cache of a config (its paths.cache) or of a directory."""
    return FeatureCache(where.cache_dir if isinstance(where, Config) else Path(where))


def read_features(config: Config, *, cache: str = "", pooled: bool = True) -> Features:
    """Every committed item of a namespace as row-aligned numpy arrays (keys, paths, audio, video,
    masks, duration, ids, music ids, splits; a key cached twice appears once).

    The namespace is `cache` (a fingerprint prefix), else the one of the config's extractor
    settings, else the only one in the cache. `pooled`: each item's clips are mean-pooled and
    L2-normalised per shard while reading ((n, dim) float32, memory ∝ items × dim); otherwise the
    per-clip float16 embeddings ((n, clips, dim)).
    """
    ns = select_namespace(config.cache_dir, cache, config)
    return ns.load(pool=mean_pool if pooled else None)
