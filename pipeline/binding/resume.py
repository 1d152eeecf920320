"""Continuing a killed training run where it stopped, to exactly the weights an uninterrupted run ends with.

Each epoch writes `last.pt` beside `best.pt` (atomically): a projector checkpoint that loads like
`best.pt`, plus a "training" entry with everything else the loop's future depends on:

- the optimiser's state (AdamW moments and step counts);
- the step: the learning-rate schedule is a pure function of it (`training.lr_at`);
- the random states: torch's global generator (dropout; it also drew the initial weights), the
  batch-order generator, and the CUDA generator when training there. numpy's and Python's are not
  stored because the loop draws nothing from them (the resume test would catch it if it began to);
- the early-stopping state (best score and val loss, epoch and metrics, epochs since the phase's best), the
  phase with its best and each phase's lowest val loss (a plateau moves to the next phase, which begins
  from best.pt or as a new run; last.pt is written after that, so it holds where the next phase begins;
  `training.phases`), the loop's time so far,
  and the epochs at which the run was resumed.

Everything is a tensor or a plain type, so `torch.load(weights_only=True)` reads it. A resume is refused
when the settings that shape the numbers differ from the run's, or when the run finished.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from mvbind.pipeline.binding.checkpoint import CheckpointError, read_checkpoint
from mvbind.pipeline.binding.projector import BindingModel
from mvbind.pipeline.config import Config, to_dict

# Settings a resumed run may not change: all of [train] but `cache` (the namespace is checked by its
# fingerprint instead, so `--cache` may be left out), and the Ks of the per-epoch validation recall.
# `threads` and `device` are included: they change the order of floating-point sums, hence the bits.
IGNORED_TRAIN_KEYS = ("cache",)
EVAL_KEYS = ("ks",)
# Settings added later: a run whose config.json predates one trained as this value does.
BEFORE_RECORDED = {("train", "branch_start"): "start", ("train", "plateau_drops"): 0,
                   ("train", "plateau_lr_factor"): 0.3, ("train", "clip_dropout"): 0.0,
                   ("train", "soup"): False}


@dataclass
class Progress:
    """Where the training loop stands after `epoch` complete epochs."""

    epoch: int = 0
    step: int = 0
    best_score: float = -1.0
    best_epoch: int = 0
    best_val: dict | None = None
    bad: int = 0  # epochs since the best one
    seconds: float = 0.0  # training-loop time of the sessions before this one
    resumed_at: list[int] = field(default_factory=list)  # epochs after which the run was resumed
    phase: int = 0  # index into training.phases(settings); a plateau moves on from the best epoch's weights
    phase_epochs: list[int] = field(default_factory=list)  # epochs after which each later phase began
    best_loss: float = math.inf  # val loss of the best epoch (breaks ties of the score)
    phase_best: list[float] | None = None  # [score, -val loss] of this phase's best epoch; None: the run's best
    phase_losses: list[float] = field(default_factory=list)  # the lowest val loss of each phase so far


def training_state(progress: Progress, opt: torch.optim.Optimizer, generator: torch.Generator,
                   device: torch.device) -> dict:
    """The "training" entry of last.pt: optimiser, RNG states and loop state as tensors and plain types."""
    rng = {"torch": torch.get_rng_state(), "batch_order": generator.get_state()}
    if device.type == "cuda":
        rng["cuda"] = torch.cuda.get_rng_state(device)
    return {"progress": dataclasses.asdict(progress), "optimizer": opt.state_dict(), "rng": rng}


def restore(checkpoint: dict, model: BindingModel, opt: torch.optim.Optimizer, generator: torch.Generator,
            device: torch.device) -> Progress:
    """Put model, optimiser and random states back as last.pt recorded them; returns the loop's state."""
    state = checkpoint["training"]
    model.load_state_dict(checkpoint["state_dict"])
    opt.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["rng"]["torch"])
    generator.set_state(state["rng"]["batch_order"])
    if device.type == "cuda" and "cuda" in state["rng"]:
        torch.cuda.set_rng_state(state["rng"]["cuda"], device)
    return Progress(**state["progress"])


def load_last(path: Path) -> dict | None:
    """last.pt with its training state, or None when the run was killed before its first epoch ended."""
    if not path.exists():
        return None
    ck = read_checkpoint(path)
    if not isinstance(ck.get("training"), dict) or "progress" not in ck["training"]:
        raise CheckpointError(f"{path}: holds no training state to resume from; start a new run")
    return ck


def changed_settings(recorded: dict, config: Config) -> list[str]:
    """'section.key recorded → given' for each setting a resume must keep (see IGNORED_TRAIN_KEYS)."""
    given = json.loads(json.dumps(to_dict(config)))  # tuples → lists, as config.json holds them
    keys = [("train", k) for k in given["train"] if k not in IGNORED_TRAIN_KEYS] + [("eval", k) for k in EVAL_KEYS]
    missing = object()
    out = []
    for section, key in keys:
        was = recorded.get(section, {}).get(key, BEFORE_RECORDED.get((section, key), missing))
        now = given[section][key]
        if was is missing or was != now:
            out.append(f"{section}.{key} {'(not recorded)' if was is missing else json.dumps(was)} → "
                       f"{json.dumps(now)}")
    return out


def trim_log(path: Path, epochs: int) -> int:
    """Keep one record for each of epochs 1..`epochs` in metrics.jsonl, dropping what a kill left beyond the
    checkpoint (a record written before last.pt, a torn line); rewritten atomically. Returns the records kept."""
    kept: dict[int, str] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                epoch = int(json.loads(line)["epoch"])
            except (ValueError, KeyError, TypeError):
                continue  # a line torn by the kill
            if 1 <= epoch <= epochs and epoch not in kept:
                kept[epoch] = line
    tmp = path.with_name(f".tmp-{path.name}")
    tmp.write_text("".join(kept[e] + "\n" for e in sorted(kept)))
    os.replace(tmp, path)
    return len(kept)
