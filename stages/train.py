"""Stage two, training: cached features -> a binding projector in runs/<name>/.

    runs/<name>/
        config.json          resolved settings (every section) and the command's own options
        cache.json           the cache namespace: fingerprint, path, item counts, extractor settings
        split.json           the rule and the item keys of train / val / test
        groups.json          music-group settings, summary, and the keys of every shared-track group
        model.json           the ProjectorSpec (shapes) of the checkpoint
        metrics.jsonl        one line per epoch: loss, lr, temperature, validation recall, seconds
        best.pt              the checkpoint with the best validation recall (weights-only loadable)
        final_metrics.json   written last: best epoch, its validation metrics, why training stopped

Reads the cache only: no media file, no encoder. Seeded; on CPU the same command gives the
same numbers. The test split is never read by the training loop.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import click
import numpy as np
import torch
from tqdm import tqdm

from pipeline.checkpoint import save_checkpoint
from pipeline.cliutil import config_options, one_line_errors, resolve_config, run_in_process
from pipeline.config import Config, to_dict
from pipeline.errors import MvbindError
from pipeline.groups import MusicGroups, find_groups
from pipeline.loss import BindingLoss
from pipeline.metrics import retrieval_ranks, summarize
from pipeline.pairs import PairSet, load_pairs, select_namespace
from pipeline.projector import BindingModel, ProjectorSpec, param_groups
from pipeline.splits import Split, assign_splits

RUN_MARKERS = ("config.json", "metrics.jsonl", "final_metrics.json")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")


class RunError(MvbindError):
    """The run directory or the data can't be used as asked."""


def say(message: str) -> None:
    """A notice for the user, on stderr (stdout carries only results)."""
    tqdm.write(message, file=sys.stderr)


# -- shared with evaluation ---------------------------------------------------------------
def music_groups(pairs: PairSet, config: Config) -> MusicGroups:
    t = config.train
    return find_groups(pairs.music_ids, pairs.audio if t.audio_dup_groups else None,
                       use_music_id=t.music_id_groups, audio_threshold=t.audio_dup_threshold,
                       chunk_mb=config.eval.chunk_mb)


def make_split(pairs: PairSet, groups: MusicGroups, config: Config) -> Split:
    t = config.train
    return assign_splits(pairs.keys, pairs.manifest_splits, groups.labels, val_fraction=t.val_fraction,
                         test_fraction=t.test_fraction, salt=t.split_salt, origins=pairs.shard_of)


def skipped_note(pairs: PairSet) -> str | None:
    parts = [f"{v} without {k[3:]}" for k, v in pairs.skipped.items() if v]
    return f"skipped {', '.join(parts)} (no pair to learn from)" if parts else None


def encode(model: BindingModel, video, audio, *, batch: int = 8192) -> tuple[torch.Tensor, torch.Tensor]:
    """Embed row-aligned inputs with the model in eval mode, in batches."""
    model.eval()
    vs, as_ = [], []
    with torch.no_grad():
        for s in range(0, len(video), batch):
            vs.append(model.encode_video(torch.as_tensor(video[s:s + batch])))
            as_.append(model.encode_audio(torch.as_tensor(audio[s:s + batch])))
    return torch.cat(vs), torch.cat(as_)


def val_summary(v2m: np.ndarray, m2v: np.ndarray, ks) -> dict:
    return {"video_to_music": summarize(v2m, ks), "music_to_video": summarize(m2v, ks)}


def relabel(labels: np.ndarray) -> np.ndarray:
    return np.unique(labels, return_inverse=True)[1].astype(np.int64)


# -- run directory ----------------------------------------------------------------------
def run_name(name: str | None) -> str:
    name = name or time.strftime("%Y%m%d-%H%M%S")
    if not NAME_RE.match(name) or name in (".", ".."):
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
    tmp = path.with_name(f".tmp-{path.name}")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
    tmp.replace(path)


# -- training ----------------------------------------------------------------------------
@dataclass
class _Data:
    video: torch.Tensor  # (n, dv) pooled float32, or (n, cv, dv) float16 clips for attention pooling
    audio: torch.Tensor
    groups: torch.Tensor  # (n,) int64


def _inputs(pairs: PairSet, idx: np.ndarray, pooling: str) -> tuple[torch.Tensor, torch.Tensor]:
    if pooling == "attention":
        return torch.from_numpy(pairs.video_clips[idx]), torch.from_numpy(pairs.audio_clips[idx])
    return (torch.from_numpy(np.ascontiguousarray(pairs.video[idx])),
            torch.from_numpy(np.ascontiguousarray(pairs.audio[idx])))


def lr_at(step: int, *, base: float, floor: float, warmup: int, total: int) -> float:
    """Linear warm-up over `warmup` steps, then cosine decay from `base` to `floor` at `total`."""
    if step < warmup:
        return base * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return floor + 0.5 * (base - floor) * (1 + math.cos(math.pi * progress))


def train_epoch(model: BindingModel, opt: torch.optim.Optimizer, loss_fn: BindingLoss, video: torch.Tensor,
                audio: torch.Tensor, groups: torch.Tensor, *, batch_size: int, generator: torch.Generator,
                lr_of_step: Callable[[int], float], first_step: int = 0, max_logit_scale: float = 100.0,
                bar: tqdm | None = None) -> tuple[float, float]:
    """One pass over the pairs in a seeded random order, full batches only (the rest is dropped).
    Returns (summed loss, last learning rate)."""
    model.train()
    n = len(video)
    steps = n // batch_size
    order = torch.randperm(n, generator=generator).to(video.device)
    loss_sum = torch.zeros((), device=video.device)
    lr = lr_of_step(first_step)
    for s in range(steps):
        idx = order[s * batch_size:(s + 1) * batch_size]
        lr = lr_of_step(first_step + s)
        for group in opt.param_groups:
            group["lr"] = lr
        v_emb = model.encode_video(video.index_select(0, idx))
        a_emb = model.encode_audio(audio.index_select(0, idx))
        loss = loss_fn(v_emb, a_emb, model.logit_scale.exp(), groups.index_select(0, idx))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        model.clamp_logit_scale(max_logit_scale)
        loss_sum += loss.detach()
        if bar is not None:
            bar.update(1)
            if s % 8 == 0 or s == steps - 1:
                bar.set_postfix_str(f"loss {loss.item():.4f}", refresh=False)
    return float(loss_sum), lr


def train(config: Config, *, cache: str | None = None, name: str | None = None, overwrite: bool = False,
          progress: bool = True, cli_options: dict | None = None,
          notify: Callable[[str], None] = say) -> Path:
    """Train the binding projector on one cache namespace; returns the run directory."""
    t = config.train
    name = run_name(name)
    run_dir = config.runs_dir / name
    if run_dir.exists() and not overwrite:  # refuse before any work
        raise RunError(f"{run_dir} already exists; choose another --name or pass --overwrite to replace it")
    prefix = cache if cache is not None else t.cache
    ns = select_namespace(config.cache_dir, prefix, config, say=notify)
    pairs = load_pairs(ns, keep_clips=t.pooling == "attention")
    notify(f"cache {ns.fingerprint[:16]}: {len(pairs)} usable pairs")
    if note := skipped_note(pairs):
        notify(note)
    t0 = time.perf_counter()
    groups = music_groups(pairs, config)
    notify(groups.describe() + f" [{time.perf_counter() - t0:.1f}s]")
    split = make_split(pairs, groups, config)
    counts = split.counts()
    notify(f"split ({split.rule}): " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    if split.straddling_groups:
        notify(f"warning: {split.straddling_groups} music groups have members in more than one manifest split")
    where = "the manifest's splits" if split.rule == "manifest" else "train.val_fraction/test_fraction"
    if counts["train"] == 0:
        raise RunError(f"the train split is empty ({counts}); check {where}")
    if counts["val"] == 0:
        raise RunError(f"the val split is empty ({counts}); early stopping needs it: raise train.val_fraction "
                       "or give the manifest val items")
    if counts["train"] < t.batch_size:
        raise RunError(f"the train split has {counts['train']} pairs, fewer than train.batch_size = {t.batch_size}; "
                       f"set --set train.batch_size={max(2, counts['train'])} or less")
    if counts["test"] == 0:
        notify("warning: the test split is empty; `cli.py eval` will have nothing to test this run on")
    if counts["val"] <= int(t.select_metric[1:]):
        notify(f"warning: the val split has {counts['val']} items, so val {t.select_metric.upper()} is trivially "
               "perfect and cannot pick a checkpoint; use a smaller train.select_metric or a larger val split")

    claim_run_dir(run_dir, overwrite)
    spec = ProjectorSpec.from_train_config(t, audio_shape=pairs.audio_shape, video_shape=pairs.video_shape)
    write_json(run_dir / "config.json", {**to_dict(config), "command": cli_options or {}, "run": name})
    write_json(run_dir / "cache.json", {
        "fingerprint": ns.fingerprint, "namespace": str(ns.root), "cache_dir": str(config.cache_dir),
        "usable_pairs": len(pairs), "skipped": pairs.skipped, "settings": ns.settings})
    write_json(run_dir / "split.json", {
        "rule": split.rule, "salt": t.split_salt, "val_fraction": t.val_fraction, "test_fraction": t.test_fraction,
        "counts": counts, "straddling_groups": split.straddling_groups,
        **{s: pairs.keys[split.indices(s)].tolist() for s in ("train", "val", "test")}})
    members = [pairs.keys[m].tolist() for m in groups.members()]
    write_json(run_dir / "groups.json", {
        "settings": {"music_id_groups": t.music_id_groups, "audio_dup_groups": t.audio_dup_groups,
                     "audio_dup_threshold": t.audio_dup_threshold},
        "summary": groups.summary(), "groups": members})
    write_json(run_dir / "model.json", spec.to_dict())

    with torch.random.fork_rng(devices=[]):
        result = _fit(config, spec, pairs, groups, split, run_dir, progress, notify)
    write_json(run_dir / "final_metrics.json", result)
    best = result["best_val"]
    notify(f"best epoch {result['best_epoch']}: val R@{t.select_metric[1:]} video->music "
           f"{best['video_to_music'][f'R@{t.select_metric[1:]}']:.3f}, music->video "
           f"{best['music_to_video'][f'R@{t.select_metric[1:]}']:.3f} ({result['stop_reason']})")
    return run_dir


def _fit(config: Config, spec: ProjectorSpec, pairs: PairSet, groups: MusicGroups, split: Split, run_dir: Path,
         progress: bool, notify: Callable[[str], None]) -> dict:
    t = config.train
    ks = tuple(config.eval.ks)
    select_k = int(t.select_metric[1:])
    if select_k not in ks:
        ks = tuple(sorted({*ks, select_k}))
    threads_before = torch.get_num_threads()
    if t.threads:
        torch.set_num_threads(t.threads)
    device = torch.device(t.device)
    try:
        torch.manual_seed(t.seed)
        model = BindingModel(spec).to(device)
        loss_fn = BindingLoss(multi_positive=t.multi_positive)
        opt = torch.optim.AdamW(param_groups(model, t.weight_decay), lr=t.lr, betas=(0.9, 0.98), eps=1e-6,
                                fused=True)  # CLIP's betas and eps; fused: one kernel per step on CPU
        train_idx, val_idx = split.indices("train"), split.indices("val")
        tv, ta = _inputs(pairs, train_idx, spec.pooling)
        tg = torch.from_numpy(relabel(groups.labels[train_idx]))
        vv, va = _inputs(pairs, val_idx, spec.pooling)
        val_groups = relabel(groups.labels[val_idx])
        tv, ta, tg = tv.to(device), ta.to(device), tg.to(device)
        if not t.learn_temperature:
            model.logit_scale.requires_grad_(False)
        n, bs = len(train_idx), t.batch_size
        steps = n // bs  # drop the last partial batch: every step sees bs - 1 negatives
        total = steps * t.epochs
        warmup = int(round(t.warmup_epochs * steps))
        gen = torch.Generator().manual_seed(t.seed)

        def schedule(i: int) -> float:
            return lr_at(i, base=t.lr, floor=t.min_lr, warmup=warmup, total=total)

        best_score, best_epoch, best_val, bad, step = -1.0, 0, None, 0, 0
        stop_reason = f"ran all {t.epochs} epochs"
        log_path = run_dir / "metrics.jsonl"
        t_start = time.perf_counter()
        for epoch in range(1, t.epochs + 1):
            t_epoch = time.perf_counter()
            bar = tqdm(total=steps, desc=f"epoch {epoch}/{t.epochs}", unit="step", disable=not progress,
                       leave=True, dynamic_ncols=True, file=sys.stderr)
            loss_sum, lr = train_epoch(model, opt, loss_fn, tv, ta, tg, batch_size=bs, generator=gen,
                                       lr_of_step=schedule, first_step=step, max_logit_scale=t.max_logit_scale,
                                       bar=bar if progress else None)
            step += steps
            train_seconds = time.perf_counter() - t_epoch
            mean_loss = loss_sum / max(steps, 1)
            if not math.isfinite(mean_loss):
                bar.close()
                raise RunError(f"training diverged at epoch {epoch} (loss {mean_loss}); lower train.lr (now {t.lr})")
            ve, ae = encode(model, vv.to(device), va.to(device))
            r_v2m, r_m2v = retrieval_ranks(ve.cpu(), ae.cpu(), val_groups, chunk_mb=config.eval.chunk_mb)
            val = val_summary(r_v2m, r_m2v, ks)
            score = (val["video_to_music"][f"R@{select_k}"] + val["music_to_video"][f"R@{select_k}"]) / 2
            improved = score > best_score
            if progress:
                bar.set_postfix_str(f"loss {mean_loss:.4f} val R@{select_k} {score:.3f}{' *' if improved else ''}")
                bar.close()
            record = {"epoch": epoch, "step": step, "train_loss": mean_loss, "lr": lr,
                      "logit_scale": float(model.logit_scale.detach().exp()), "val": val,
                      f"val_r{select_k}_mean": score,
                      "improved": improved, "train_seconds": round(train_seconds, 4),
                      "epoch_seconds": round(time.perf_counter() - t_epoch, 4)}
            with open(log_path, "a") as f:
                f.write(json.dumps(record) + "\n")
            if improved:
                best_score, best_epoch, best_val, bad = score, epoch, val, 0
                save_checkpoint(run_dir / "best.pt", model, fingerprint=pairs.fingerprint, epoch=epoch,
                                metrics={"val": val, "select": t.select_metric, "score": score})
            else:
                bad += 1
                if t.patience and bad >= t.patience:
                    stop_reason = f"early stop: no better val R@{select_k} for {t.patience} epochs"
                    break
        return {"run": run_dir.name, "fingerprint": pairs.fingerprint, "best_epoch": best_epoch,
                "best_val": best_val, "select_metric": t.select_metric, "best_score": best_score,
                "epochs_run": epoch, "steps": step, "stop_reason": stop_reason,
                "logit_scale": float(model.logit_scale.detach().exp()),
                "pairs": {"train": int(n), "val": int(len(val_idx)), "test": int(len(split.indices("test")))},
                "seconds": round(time.perf_counter() - t_start, 3)}
    finally:
        torch.set_num_threads(threads_before)


# -- command line ------------------------------------------------------------------------
@click.command("train")
@config_options
@click.option("--cache", "cache_prefix", default=None, metavar="PREFIX",
              help="Fingerprint prefix of the cache namespace (default: the one pipeline.toml's settings name).")
@click.option("--name", default=None, help="Run directory name under paths.runs (default: a timestamp).")
@click.option("--overwrite", is_flag=True, help="Replace an existing run directory of the same name.")
@click.option("--epochs", type=int, default=None, help="Shortcut for --set train.epochs=N.")
@click.option("--batch-size", type=int, default=None, help="Shortcut for --set train.batch_size=N.")
@click.option("--lr", type=float, default=None, help="Shortcut for --set train.lr=X.")
@click.option("--seed", type=int, default=None, help="Shortcut for --set train.seed=N.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@one_line_errors
def train_command(config_path, sets, cache_prefix, name, overwrite, epochs, batch_size, lr, seed, quiet):
    """Train the binding projector on cached features; writes runs/<name>/."""
    config = resolve_config(config_path, sets, {"train.cache": cache_prefix, "train.epochs": epochs,
                                                "train.batch_size": batch_size, "train.lr": lr, "train.seed": seed})
    options = {"config": config_path, "set": list(sets), "cache": cache_prefix, "name": name, "overwrite": overwrite}
    run_dir = train(config, name=name, overwrite=overwrite, progress=not quiet, cli_options=options)
    click.echo(str(run_dir))


def main(argv: list[str] | None = None) -> int:
    """In-process entry (tests, notebooks): `main(["--cache", "3fa2", "--epochs", "3"])`; returns the exit code."""
    return run_in_process(train_command, argv, "train")
