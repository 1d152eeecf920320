"""`mvbind sweep`: a grid of stage-two settings on one cache, several seeds each, one table.

    mvbind sweep --grid train.projector=mlp,linear,residual --grid train.lr=1e-3,3e-4 --seeds 3 --name proj

    runs/<name>/
        <settings that differ>-s<seed>/   one normal run directory per trial (train's own code path)
        eval/                              `mvbind eval` of every trial (metrics.json, table.md, plot)
        sweep.json                         the grid, the trials, and mean ± std per setting combination
        table.md                           that table: rows labelled by the settings that differ
        sweep.png                          mean Recall@K per combination, both directions (legend outside)

Why a stage that composes other stages: a trial must be exactly what `mvbind train` would
have produced (same run directory, same checkpoint, same early stopping), and its numbers
exactly what `mvbind eval` reports, so the sweep calls those two stage functions rather
than a second copy of their loops. Like the demo, it is a composer: it may import train and
evaluate, and no other stage may import it (pyproject's import-linter contracts).

A trial whose run directory is complete (final_metrics.json) with the same settings is
reused, so an interrupted sweep, or one with an axis value added, trains only what is missing.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mvbind.pipeline.binding.report import DIRECTIONS, recall_axes
from mvbind.pipeline.binding.runs import RunError, run_name, write_json
from mvbind.pipeline.config import Config, build_config, to_dict
from mvbind.pipeline.console import say
from mvbind.stages.evaluate import evaluate
from mvbind.stages.train import train

COLUMNS = ("R@1", "R@10", "median_rank")
FIXED = ("train.seed", "train.cache", "train.device", "train.threads")  # not axes: --seeds, --cache, the machine


@dataclass
class SweepResult:
    out_dir: Path
    rows: list[dict]  # one per setting combination: label, settings, seeds, runs, mean/std per direction
    table: str
    trials: list[dict] = field(default_factory=list)


def parse_grid(items: list[str] | tuple[str, ...]) -> dict[str, list[str]]:
    """["train.lr=1e-3,3e-4", ...] -> {"train.lr": ["1e-3", "3e-4"]}; only train.* settings vary."""
    grid: dict[str, list[str]] = {}
    for item in items:
        key, eq, values = item.partition("=")
        key = key.strip()
        if not eq or not values.strip():
            raise RunError(f"--grid {item!r}: expected train.KEY=V1,V2,… (e.g. --grid train.lr=1e-3,3e-4)")
        if not key.startswith("train.") or key in FIXED:
            raise RunError(f"--grid {key}: a sweep varies train.* settings other than {', '.join(FIXED)}; "
                           "use --seeds for seeds and --cache / --set for the rest")
        if key in grid:
            raise RunError(f"--grid {key} is given twice; list all its values in one --grid {key}=V1,V2")
        grid[key] = [v.strip() for v in values.split(",") if v.strip()]
    return grid


def trial_label(settings: dict[str, str], varying: list[str]) -> str:
    """'projector=linear lr=3e-4': the settings that differ between trials, section prefix dropped."""
    return " ".join(f"{k.split('.', 1)[1]}={settings[k]}" for k in varying) or "defaults"


def _dir_name(label: str, seed: int) -> str:
    return re.sub(r"[^A-Za-z0-9._+-]+", "_", label.replace("=", "-").replace(" ", "_")) + f"-s{seed}"


def sweep(config: Config, grid: dict[str, list[str]], *, seeds: int = 3, cache: str | None = None,
          name: str | None = None, overwrite: bool = False, progress: bool = False,
          notify: Callable[[str], None] = say) -> SweepResult:
    """Train every combination of `grid` with `seeds` seeds (train.seed, +1, …), evaluate all trials on
    their test split, and aggregate mean ± std per combination."""
    if seeds < 1:
        raise RunError(f"--seeds {seeds}: give at least 1")
    name = run_name(name or "sweep")
    out_dir = config.runs_dir / name
    own = ("eval", "sweep.json", "table.md", "sweep.png")
    foreign = [p for p in out_dir.iterdir() if p.name not in own and not (p / "config.json").is_file()] \
        if out_dir.is_dir() else []
    if foreign or (out_dir.exists() and not out_dir.is_dir()):
        raise RunError(f"{out_dir} is not a sweep folder (it holds {foreign[0].name if foreign else 'no folder'}); "
                       "choose another --name")
    out_dir.mkdir(parents=True, exist_ok=True)
    base = to_dict(config)
    base["paths"]["runs"] = str(out_dir)  # trials are normal run directories inside the sweep's folder
    varying = [k for k, vs in grid.items() if len(vs) > 1]
    combos = [dict(zip(grid, vs)) for vs in itertools.product(*grid.values())] or [{}]
    planned = [(trial_label(settings, varying), settings, config.train.seed + s,
                build_config(base, {**settings, "train.seed": config.train.seed + s}, origin="sweep"))
               for settings in combos for s in range(seeds)]  # every value validated before any training
    trials: list[dict] = []
    for label, settings, seed, trial_config in planned:
        run_dir = out_dir / _dir_name(label, seed)
        trials.append({"label": label, "settings": settings, "seed": seed, "run": run_dir.name,
                       "reused": _reusable(run_dir, trial_config)})
        if trials[-1]["reused"]:
            notify(f"sweep: {run_dir.name} is complete with these settings; reused")
            continue
        if (run_dir / "final_metrics.json").exists() and not overwrite:
            raise RunError(f"{run_dir} is a finished trial with other settings; pass --overwrite to retrain it "
                           "or choose another --name")
        notify(f"sweep: training {run_dir.name} ({len(trials)} of {len(planned)})")
        # an unfinished trial (interrupted sweep) is simply trained again
        train(trial_config, cache=cache, name=run_dir.name, overwrite=overwrite or run_dir.exists(),
              progress=progress, notify=lambda _line: None, cli_options={"sweep": name, "grid": grid, "seed": seed})
    eval_config = build_config(base, {}, origin="sweep")
    eval_dir, metrics = evaluate(eval_config, [out_dir / t["run"] for t in trials], out=out_dir / "eval",
                                 overwrite=True, notify=notify)
    by_run = {r["name"].split(" [")[0]: r for r in metrics["rows"] if r["kind"] == "run"}
    baselines = [r for r in metrics["rows"] if r["kind"] != "run"]
    rows = _aggregate(trials, by_run, varying)
    table = sweep_table(rows, baselines)
    write_json(out_dir / "sweep.json", {"grid": grid, "seeds": seeds, "varying": varying, "trials": trials,
                                        "rows": rows, "eval": str(eval_dir)})
    (out_dir / "table.md").write_text(f"# Sweep {name}: test split, mean ± std over {seeds} seeds\n\n{table}")
    plot_sweep(rows, baselines, out_dir / "sweep.png", title=f"sweep {name}: mean Recall@K over {seeds} seeds")
    return SweepResult(out_dir, rows, table, trials)


def _reusable(run_dir: Path, trial_config: Config) -> bool:
    """A finished trial trained with exactly these train settings."""
    try:
        recorded = json.loads((run_dir / "config.json").read_text())["train"]
        done = (run_dir / "final_metrics.json").is_file()
    except (OSError, ValueError, KeyError):
        return False
    return done and recorded == json.loads(json.dumps(to_dict(trial_config)["train"]))


def _aggregate(trials: list[dict], by_run: dict[str, dict], varying: list[str]) -> list[dict]:
    rows: list[dict] = []
    for label in dict.fromkeys(t["label"] for t in trials):
        group = [t for t in trials if t["label"] == label]
        evals = [by_run[t["run"]] for t in group]
        row = {"label": label, "settings": group[0]["settings"], "seeds": [t["seed"] for t in group],
               "runs": [t["run"] for t in group], "gallery": evals[0]["gallery"]}
        for key, _ in DIRECTIONS:
            row[key] = {}
            for metric in (*COLUMNS, "mean_rank"):
                values = np.array([e[key][metric] for e in evals], np.float64)
                row[key][metric] = {"mean": float(values.mean()),
                                    "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
                                    "values": values.tolist()}
            curves = np.array([e["curves"][key] for e in evals], np.float64)
            row[key]["curve"] = curves.mean(axis=0).tolist()
        epochs = [e.get("epoch") for e in evals]
        row["best_epoch"] = epochs
        rows.append(row)
    return rows


def sweep_table(rows: list[dict], baselines: list[dict] = ()) -> str:
    """Markdown: one line per combination; R@1 and R@10 in %, median rank; mean ± std over seeds."""
    head = ["settings", "seeds"] + [f"{short} {c.replace('median_rank', 'median')}"
                                    for _, short in DIRECTIONS for c in COLUMNS] + ["best epochs"]
    lines = ["| " + " | ".join(head) + " |", "|---|---:|" + "---:|" * (2 * len(COLUMNS)) + "---|"]
    for row in rows:
        cells = []
        for key, _ in DIRECTIONS:
            for c in COLUMNS:
                m = row[key][c]
                scale = 1 if c == "median_rank" else 100
                cells.append(f"{scale * m['mean']:.1f} ± {scale * m['std']:.1f}")
        lines.append("| " + " | ".join([row["label"], str(len(row["seeds"])), *cells,
                                        ",".join(str(e) for e in row["best_epoch"])]) + " |")
    for b in baselines:
        cells = [f"{(1 if c == 'median_rank' else 100) * b[key][c]:.1f}" for key, _ in DIRECTIONS for c in COLUMNS]
        lines.append("| " + " | ".join([f"*{b['name']}*", "–", *cells, "–"]) + " |")
    return "\n".join(lines) + "\n"


def plot_sweep(rows: list[dict], baselines: list[dict], path: Path, *, title: str = "") -> None:
    """Mean Recall@K curves per combination (a band of ± one std at each K), both directions.
    The legend sits below the panels, so it never hides a curve however many there are."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    longest = max([len(r[DIRECTIONS[0][0]]["curve"]) for r in rows] or [1])
    for ax, (key, label) in zip(axes, DIRECTIONS):
        for row in rows:
            curve = 100 * np.asarray(row[key]["curve"])
            ax.plot(np.arange(1, len(curve) + 1), curve, label=row["label"])
        for b in baselines:
            curve = 100 * np.asarray(b["curves"][key])
            ax.plot(np.arange(1, len(curve) + 1), curve, ls="--" if b["kind"] == "chance" else ":", color="0.5",
                    label=b["name"])
        recall_axes(ax, label, (1, 5, 10, 25, 50, 100), longest)
    axes[0].set_ylabel("Recall@K (%)")
    axes[0].set_ylim(0, 100)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=min(3, len(labels)), fontsize=8,
               frameon=False)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


__all__ = ["SweepResult", "parse_grid", "plot_sweep", "sweep", "sweep_table", "trial_label"]
