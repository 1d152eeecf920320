"""Train/val/test splits of cached items.

- manifest: when the cache carries a per-item `split` (any non-empty value), it is used as
  given; every usable item must then have one of train/val/test (aliases: valid, validation,
  dev -> val).
- hash: otherwise each music group goes to one split by a stable hash of its smallest item
  key (sha256 of "salt:key"; u < test_fraction -> test, < test+val -> val, else train). For an
  item without shared music that is a hash of its own key. Keeping a group together means a
  track heard in training is never a test answer. The same keys, salt and fractions give
  the same split on any machine, in any item order.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from mvbind.errors import MvbindError

SPLITS = ("train", "val", "test")
ALIASES = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
           "dev": "val", "test": "test", "testing": "test"}


class SplitError(MvbindError):
    """The manifest's splits can't be used as given."""


@dataclass
class Split:
    names: np.ndarray  # (n,) "train" | "val" | "test"
    rule: str  # "manifest" | "hash"
    straddling_groups: int = 0  # music groups with members in more than one split (manifest rule only)

    def indices(self, name: str) -> np.ndarray:
        return np.flatnonzero(self.names == name)

    def counts(self) -> dict[str, int]:
        return {s: int((self.names == s).sum()) for s in SPLITS}


def hash_unit(text: str) -> float:
    """A stable number in [0, 1) from text."""
    return int(hashlib.sha256(text.encode()).hexdigest()[:16], 16) / 2.0**64


def assign_splits(keys: np.ndarray, manifest: np.ndarray, groups: np.ndarray, *, val_fraction: float,
                  test_fraction: float, salt: str, origins: np.ndarray | None = None) -> Split:
    """keys, manifest split strings ("" = none), group labels: (n,) each; origins name each row's shard."""
    keys = np.asarray(keys).astype(str)
    manifest = np.array([str(s).strip().lower() for s in manifest], dtype=object)
    groups = np.asarray(groups)
    n = len(keys)
    given = manifest != ""
    if given.any():
        def where(i: int) -> str:
            return f" (shard {origins[i]}, key {keys[i]})" if origins is not None else f" (key {keys[i]})"

        if not given.all():
            i = int(np.flatnonzero(~given)[0])
            raise SplitError(f"{int((~given).sum())} of {n} items have no manifest split while {int(given.sum())} do, "
                             f"e.g. item {i}{where(i)}; give every item a split (train/val/test) or none")
        names = np.empty(n, dtype=object)
        for i, s in enumerate(manifest):
            if s not in ALIASES:
                raise SplitError(f"unknown manifest split {s!r}{where(i)}; use train, val or test")
            names[i] = ALIASES[s]
        straddle = 0
        if n:
            _, g = np.unique(groups, return_inverse=True)
            code = np.array([SPLITS.index(x) for x in names])
            per_group = np.zeros((g.max() + 1, 3), bool)
            per_group[g, code] = True
            straddle = int((per_group.sum(1) > 1).sum())
        return Split(names, "manifest", straddle)
    # hash rule: one draw per group, from its smallest key
    names = np.empty(n, dtype=object)
    if n:
        order = np.lexsort((keys, groups))  # by group, then key: the first of each group is its smallest key
        g_sorted = groups[order]
        first = np.ones(n, bool)
        first[1:] = g_sorted[1:] != g_sorted[:-1]
        starts = np.flatnonzero(first)
        ends = np.append(starts[1:], n)
        for a, b in zip(starts.tolist(), ends.tolist()):
            u = hash_unit(f"{salt}:{keys[order[a]]}")
            names[order[a:b]] = "test" if u < test_fraction else "val" if u < test_fraction + val_fraction else "train"
    return Split(names, "hash")
