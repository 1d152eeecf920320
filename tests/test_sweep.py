"""`mvbind sweep` on a small planted cache: trials are normal runs, the table aggregates their eval rows."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mvbind.cli import main as cli_main
from mvbind.pipeline.config import load_config
from mvbind.stages.sweep import parse_grid, sweep
from tests.planted import write_planted

SMALL = {"train.hidden_dim": "64", "train.embed_dim": "16", "train.batch_size": "64", "train.threads": "1",
         "train.epochs": "3", "eval.chunk_mb": "8"}


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    ns = write_planted(root / "cache", 500, noise=1.0, seed=3, shard_size=250)
    config = load_config(None, {"paths.cache": str(root / "cache"), "paths.runs": str(root / "runs"),
                                "train.cache": ns.fingerprint[:12], **SMALL})
    grid = parse_grid(["train.projector=linear,residual", "train.dropout=0.2"])
    result = sweep(config, grid, seeds=2, name="grid", notify=lambda _line: None)
    yield root, config, grid, result
    torch.set_num_threads(before)


def test_every_trial_is_a_normal_run_named_by_what_differs(swept):
    root, _, _, result = swept
    names = sorted(t["run"] for t in result.trials)
    assert names == ["projector-linear-s0", "projector-linear-s1", "projector-residual-s0", "projector-residual-s1"]
    for name in names:
        run = root / "runs" / "grid" / name
        assert (run / "best.pt").is_file() and (run / "final_metrics.json").is_file()
        recorded = json.loads((run / "config.json").read_text())["train"]
        assert recorded["dropout"] == 0.2 and recorded["projector"] == name.split("-")[1]
        assert recorded["seed"] == int(name[-1])


def test_rows_are_mean_and_std_of_the_trials_eval_rows(swept):
    root, _, _, result = swept
    assert [r["label"] for r in result.rows] == ["projector=linear", "projector=residual"]
    metrics = json.loads((root / "runs" / "grid" / "eval" / "metrics.json").read_text())
    per_run = {r["name"]: r for r in metrics["rows"] if r["kind"] == "run"}
    for row in result.rows:
        values = [per_run[run]["video_to_music"]["R@10"] for run in row["runs"]]
        got = row["video_to_music"]["R@10"]
        assert got["mean"] == pytest.approx(np.mean(values)) and got["std"] == pytest.approx(np.std(values, ddof=1))
    lines = result.table.splitlines()
    assert lines[2].startswith("| projector=linear | 2 | ") and " ± " in lines[2]
    assert any(line.startswith("| *chance*") for line in lines)
    assert (root / "runs" / "grid" / "sweep.png").stat().st_size > 10_000
    assert (root / "runs" / "grid" / "table.md").read_text().endswith(result.table)


def test_a_finished_trial_is_reused(swept):
    root, config, grid, result = swept
    best = root / "runs" / "grid" / "projector-linear-s0" / "best.pt"
    stamp = best.stat().st_mtime_ns
    lines: list[str] = []
    again = sweep(config, grid, seeds=2, name="grid", notify=lines.append)
    assert all(t["reused"] for t in again.trials) and best.stat().st_mtime_ns == stamp
    assert again.table == result.table


@pytest.mark.parametrize("grid, words", [
    ("train.seed=1,2", "use --seeds"),
    ("paths.cache=/x", "a sweep varies train.*"),
    ("train.lr", "expected train.KEY=V1,V2"),
])
def test_bad_axes_are_one_line_errors(grid, words, capsys):
    assert cli_main(["sweep", "--grid", grid]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and words in err, err


def test_a_bad_value_names_the_setting(swept, capsys):
    root, config, _, _ = swept
    code = cli_main(["sweep", "--grid", "train.projector=linear,transformer", "--seeds", "1",
                     "--set", f"paths.runs={root / 'runs'}", "--set", f"paths.cache={root / 'cache'}"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "train.projector" in err, err

