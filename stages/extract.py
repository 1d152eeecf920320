"""Stage one, `extract`: every input's per-clip audio and video embeddings into the feature cache.

Orchestration only: the runner (`mvbind.pipeline.runner`) does the work: worker processes hash
and decode, the main process runs the frozen encoders and commits HDF5 shards; items already in
the namespace are never decoded again.
"""

from __future__ import annotations

from pathlib import Path

from mvbind.pipeline.config import Config
from mvbind.pipeline.engines import run_engine
from mvbind.pipeline.media.inputs import InputItem
from mvbind.pipeline.runner import ExtractSummary, PlanSummary, write_source_plan

__all__ = ["ExtractSummary", "PlanSummary", "extract", "plan"]


def extract(config: Config, source: str | Path | list[InputItem], *, progress: bool = True) -> ExtractSummary:
    """Extract every video in `source` (a folder, a CSV/JSONL manifest or a list of inputs) into the
    namespace of `config`'s extractor settings, on extract.engine (local, gpus, ray); returns the summary
    (`.lines()` to print it)."""
    return run_engine(config, source, progress=progress)


def plan(config: Config, source: str | Path | list[InputItem], *, progress: bool = True) -> PlanSummary:
    """Hash every input of `source` once and write its plan into the namespace (`extract --plan-only`):
    partition jobs (`--num-shards N --shard-index i`) then take their items from it instead of each
    reading the whole collection to find them."""
    return write_source_plan(config, source, progress=progress)
