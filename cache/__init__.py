"""The feature cache: fingerprinted namespaces of HDF5 shards (see docs/ARCHITECTURE.md).

Reader API for stage two::

    from mvbind.cache import FeatureCache
    ns = FeatureCache(config.cache_dir).find("3fa2")     # or .get(settings) / .namespaces()
    feats = ns.load()          # Features: keys, paths, audio (n, clips, d) fp16, masks, meta
"""

from mvbind.cache.keys import content_key, partition_of
from mvbind.cache.namespace import (
    CacheError,
    Failure,
    FeatureCache,
    Features,
    KeyIndex,
    Namespace,
    fingerprint,
    settings_label,
)
from mvbind.cache.shards import DamagedShard, Row

__all__ = [
    "CacheError",
    "DamagedShard",
    "Failure",
    "FeatureCache",
    "Features",
    "KeyIndex",
    "Namespace",
    "Row",
    "content_key",
    "fingerprint",
    "partition_of",
    "settings_label",
]
