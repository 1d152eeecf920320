"""Run directories: names, claiming (never silently overwritten), JSON files, finding a run."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from mvbind.errors import MvbindError
from mvbind.pipeline.config import Config
from mvbind.pipeline.config.paths import PLAIN_NAME
from mvbind.pipeline.console import say

RUN_MARKERS = ("config.json", "metrics.jsonl", "final_metrics.json")


class RunError(MvbindError):
    """The run directory or the data can't be used as asked."""


# -- run directory ----------------------------------------------------------------------
def run_name(name: str | None) -> str:
    name = name or time.strftime("%Y%m%d-%H%M%S")
    if not PLAIN_NAME.match(name) or name in (".", ".."):
        raise RunError(f"run name {name!r}: use letters, digits, '.', '_', '+' or '-', "
                       "starting with a letter or digit")
    return name


def claim_run_dir(run_dir: Path, overwrite: bool, markers: tuple[str, ...] = RUN_MARKERS) -> None:
    """Create run_dir; an existing one is refused unless `overwrite`, and then removed loudly
    (only if it holds one of `markers`, i.e. it is ours)."""
    if run_dir.exists() or run_dir.is_symlink():
        if not overwrite:
            raise RunError(f"{run_dir} already exists; choose another --name or pass --overwrite to replace it")
        if not run_dir.is_dir() or run_dir.is_symlink():
            raise RunError(f"{run_dir} exists and is not a directory; move it away yourself")
        entries = list(run_dir.iterdir())
        if entries and not any((run_dir / m).exists() for m in markers):
            raise RunError(f"{run_dir} is not an mvbind directory of this kind (no {markers[0]}); "
                           "refusing to delete it with --overwrite; move it away yourself")
        say(f"--overwrite: removing the existing directory {run_dir} ({len(entries)} entries)")
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)


def write_json(path: Path, data) -> None:
    """Write JSON atomically: a temporary file renamed into place; on failure nothing partial is left."""
    tmp = path.with_name(f".tmp-{path.name}")
    try:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def find_run(config: Config, run: str | Path) -> Path:
    path = Path(run)
    for candidate in (path, config.runs_dir / str(run)):
        if (candidate / "cache.json").is_file():
            return candidate
    raise RunError(f"run {str(run)!r} not found (no {path}/cache.json, no {config.runs_dir / str(run)}/cache.json); "
                   "give a run name under paths.runs or a run directory")


def _read(run_dir: Path, name: str) -> dict:
    try:
        return json.loads((run_dir / name).read_text())
    except (OSError, ValueError) as err:
        raise RunError(f"{run_dir / name}: unreadable ({err}); the run directory is incomplete") from None
