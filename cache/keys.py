"""Item keys: a content hash of the media file, so renamed or duplicated files share one key."""

from __future__ import annotations

import hashlib
from pathlib import Path

KEY_HEX = 32  # 128 bits of sha256: collisions are not a practical concern at any collection size


def content_key(path: str | Path) -> str:
    """sha256 of the file's bytes, first 32 hex digits. Raises OSError if the file can't be read."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()[:KEY_HEX]


def partition_of(key: str, num_partitions: int) -> int:
    """The partition that owns `key`: hash(key) mod N, stable across machines and Python versions."""
    return int(key[:16], 16) % num_partitions
