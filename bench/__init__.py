"""Benchmarks: each prints its figures (nothing here is asserted); shared endings live here."""

from __future__ import annotations

import json
import os
from pathlib import Path


def finish(results: dict, load_before: tuple[float, float, float], json_path: str | None) -> None:
    """Record and print the load average after the run (a shared machine's figures need it), and write
    `results` as JSON when asked."""
    results["load_average"] = {"before": load_before, "after": os.getloadavg()}
    print(f"\nload average after {os.getloadavg()[0]:.2f}")
    if json_path:
        Path(json_path).write_text(json.dumps(results, indent=2))
