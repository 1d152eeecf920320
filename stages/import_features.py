"""`mvbind import-features FILE`: pre-extracted features (npz, HDF5, Parquet) into a cache namespace.

The namespace's fingerprint comes from the file's content hash and the import name, so `train`,
`eval` and `cache info` use it like one that `extract` filled, with no media and no encoder. The
same file imported again is a no-op (nothing is rewritten); an import cut short is completed by
importing again (only the items not yet committed are written). The schema is in
`pipeline/feature_file.py` and README.md.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from mvbind.cache import CacheError, FeatureCache, Namespace
from mvbind.pipeline.config import Config
from mvbind.pipeline.config.paths import PLAIN_NAME
from mvbind.pipeline.console import say
from mvbind.pipeline.feature_file import FeatureFileError, open_feature_file

ROWS_PER_SHARD = 4096  # larger than extract's shards: imported items arrive all at once, and fewer files read faster


@dataclass
class ImportSummary:
    namespace: Namespace
    items: int
    written: int
    audio: tuple[int, ...]
    video: tuple[int, ...]
    seconds: float
    notes: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        ns = self.namespace
        what = (f"imported {self.written} items" if self.written == self.items else
                "already imported; nothing written" if not self.written else
                f"completed an earlier import: wrote the {self.written} missing items")
        return [f"{ns.fingerprint[:16]}  {ns.label}: {what} ({self.items} items, audio {self.audio}, "
                f"video {self.video}) in {self.seconds:.1f} s",
                f"    path: {ns.root}", *("    " + n for n in self.notes),
                f"    train on it: mvbind train --cache {ns.fingerprint[:12]}"]


def import_features(config: Config, file: str | Path, *, name: str | None = None,
                    notify: Callable[[str], None] = say) -> ImportSummary:
    """Check FILE against the schema, then write its items to the namespace of (content hash, name)."""
    t0 = time.perf_counter()
    path = Path(file).expanduser().resolve()
    name = name or path.stem
    if not PLAIN_NAME.match(name):
        raise FeatureFileError(f"import name {name!r}: use letters, digits, '.', '_', '+' or '-' (--name NAME)")
    features = open_feature_file(path)
    try:
        notes = [f"ignored keys not in the schema: {', '.join(features.ignored)}"] if features.ignored else []
        keys = features.keys()
        settings = features.settings(name)
        cache = FeatureCache(config.cache_dir)
        try:
            ns = cache.get(settings)
        except CacheError:
            ns = None
        written = 0
        if ns is None or not set(keys) <= ns.committed_keys():
            for _ in features.blocks(ROWS_PER_SHARD):
                pass  # every value is checked before anything is written: a bad file leaves no namespace behind
            ns = cache.create(settings, note={"imported_from": str(path), "imported_at": time.time()})
            with ns.lock(0, 1):  # one importer at a time; a crashed one's temp files are ours to remove
                ns.clean_temp_files(0, 1)
                done = ns.committed_keys()
                for start, audio, video in features.blocks(ROWS_PER_SHARD):
                    rows = [r for r in features.rows(start, audio, video, keys) if r.key not in done]
                    if rows:
                        ns.write_shard(rows)
                        written += len(rows)
                        notify(f"{path.name}: {start + len(audio)} of {len(keys)} items, {written} written")
        first = ns.note.get("imported_from")
        if not written and first and first != str(path):
            notes.append(f"first imported from {first}")
        return ImportSummary(ns, len(keys), written, tuple(features.audio.shape), tuple(features.video.shape),
                             time.perf_counter() - t0, notes)
    finally:
        features.close()
