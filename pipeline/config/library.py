"""Music-library settings: the [library] (building) and [recommend] (querying) sections of pipeline.toml.

The window layout (`hop`, `max_windows`, with the window length = the encoder's audio clip
length) changes the cached track embeddings, so it is part of the track namespace's
fingerprint; every other setting here only changes how the library file is searched.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from mvbind.errors import ConfigError

INDEX_KINDS = ("auto", "exact", "faiss")
SEARCH_KINDS = ("auto", "exact", "faiss")
PREVIEW_AUDIO = ("replace", "mix")


@dataclass
class LibraryConfig:
    dir: str = "${MVBIND_HOME}/libraries"  # where `index --name NAME` writes NAME.mvlib.h5 (and recommend finds it)
    hop: float = 1.0  # seconds between window starts; window length = audio.clip_duration (fingerprinted)
    max_windows: int = 600  # per track; a longer track gets this many windows spread evenly (fingerprinted)
    index: str = "auto"  # auto (FAISS above faiss_threshold windows) | exact | faiss
    faiss_threshold: int = 200_000  # windows; `auto` builds a FAISS index above this
    faiss_nlist: int = 0  # IVF lists; 0 = about sqrt(windows), a power of two in [16, 65536]
    faiss_target_recall: float = 0.98  # nprobe is raised at build time until recall@10 vs exact reaches this
    faiss_queries: int = 200  # probe queries for measuring that recall at build time
    seed: int = 0  # FAISS training sample and probe queries


@dataclass
class RecommendConfig:
    k: int = 10  # tracks per video
    search: str = "auto"  # auto (FAISS when the library file has an index) | exact | faiss
    nprobe: int = 0  # IVF lists visited per query; 0 = the value tuned when the library was built
    chunk_mb: int = 256  # memory for one block of window scores in exact search
    preview_audio: str = "replace"  # --preview: replace the video's audio with the track, or mix both
    preview_mix_volume: float = 0.3  # mix: level of the video's own audio (the track stays at 1.0)


def _check(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"setting {key}: {message}")


def validate_library(config) -> None:
    """Range and choice checks for [library] and [recommend]; errors name the key."""
    lib: LibraryConfig = config.library
    rec: RecommendConfig = config.recommend
    _check(math.isfinite(lib.hop) and lib.hop > 0, "library.hop", f"must be > 0 seconds, got {lib.hop}")
    _check(lib.max_windows >= 1, "library.max_windows", f"must be >= 1, got {lib.max_windows}")
    _check(lib.index in INDEX_KINDS, "library.index", f"unknown index {lib.index!r}; choose one of "
           f"{', '.join(INDEX_KINDS)}")
    _check(lib.faiss_threshold >= 0, "library.faiss_threshold", f"must be >= 0, got {lib.faiss_threshold}")
    _check(lib.faiss_nlist >= 0, "library.faiss_nlist", f"must be >= 0 (0 = auto), got {lib.faiss_nlist}")
    _check(0 < lib.faiss_target_recall <= 1, "library.faiss_target_recall",
           f"must be in (0, 1], got {lib.faiss_target_recall}")
    _check(lib.faiss_queries >= 1, "library.faiss_queries", f"must be >= 1, got {lib.faiss_queries}")
    _check(rec.k >= 1, "recommend.k", f"must be >= 1, got {rec.k}")
    _check(rec.search in SEARCH_KINDS, "recommend.search", f"unknown search {rec.search!r}; choose one of "
           f"{', '.join(SEARCH_KINDS)}")
    _check(rec.nprobe >= 0, "recommend.nprobe", f"must be >= 0 (0 = tuned at build), got {rec.nprobe}")
    _check(rec.chunk_mb >= 1, "recommend.chunk_mb", f"must be >= 1, got {rec.chunk_mb}")
    _check(rec.preview_audio in PREVIEW_AUDIO, "recommend.preview_audio",
           f"unknown mode {rec.preview_audio!r}; choose replace or mix")
    _check(math.isfinite(rec.preview_mix_volume) and 0 <= rec.preview_mix_volume <= 4,
           "recommend.preview_mix_volume", f"must be in [0, 4], got {rec.preview_mix_volume}")
