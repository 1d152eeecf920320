"""Stage two, training: cached features -> a binding projector in runs/<name>/.

    runs/<name>/
        config.json          resolved settings (every section) and the command's own options
        cache.json           the cache namespace: fingerprint, path, item counts, extractor settings
        split.json           the rule and the item keys of train / val / test
        groups.json          music-group settings, summary, and the keys of every shared-track group
        model.json           the ProjectorSpec (shapes) of the checkpoint
        metrics.jsonl        one line per epoch: phase, train and val loss, lr, temperature, validation recall, seconds
        best.pt              the checkpoint with the best validation recall (weights-only loadable; with the
                             optimiser state while a later phase may start from it: training.phases)
        last.pt              the latest epoch's checkpoint plus the state `train --resume` continues from
        linear_best.pt       rerun with train.soup: the linear run's and the residual run's best epochs, which the
        residual_best.pt     soup averages (it replaces best.pt when its val loss is below both runs')
        final_metrics.json   written last: best epoch, its validation metrics, why training stopped
        curves.png           train/val loss, val recall and temperature per epoch

Reads the cache only: no media file, no encoder. Seeded; on CPU the same command gives the
same numbers, and a run killed and resumed (`--resume RUN`) ends with the same weights as one
that never stopped. The test split is never read by the training loop.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from tqdm import tqdm

from mvbind.cache import CacheError, FeatureCache, Namespace
from mvbind.pipeline.binding.checkpoint import copy_atomic, read_checkpoint, save_checkpoint
from mvbind.pipeline.binding.groups import MusicGroups
from mvbind.pipeline.binding.loss import BindingLoss
from mvbind.pipeline.binding.metrics import retrieval_ranks
from mvbind.pipeline.binding.pairs import PairSet, load_pairs, select_namespace
from mvbind.pipeline.binding.projector import BindingModel, ProjectorSpec, param_groups
from mvbind.pipeline.binding.report import plot_curves
from mvbind.pipeline.binding.resume import Progress, changed_settings, load_last, restore, training_state, trim_log
from mvbind.pipeline.binding.runs import RunError, _read, claim_run_dir, find_run, run_name, write_json
from mvbind.pipeline.binding.splits import Split
from mvbind.pipeline.binding.training import (
    _inputs,
    available_memory,
    begin_phase,
    clip_memory_error,
    encode,
    enter_phase,
    is_rerun,
    lr_at,
    make_split,
    music_groups,
    phases,
    relabel,
    skipped_note,
    soup_state,
    train_epoch,
    val_loss,
    val_summary,
)
from mvbind.pipeline.config import Config, to_dict
from mvbind.pipeline.console import say

# rerun with train.soup: the two runs' best epochs, which the soup averages
LINEAR_BEST, RESIDUAL_BEST = "linear_best.pt", "residual_best.pt"
SOUP_WEIGHTS = tuple(i / 8 for i in range(1, 8))  # the linear run's share; 0 and 1 are the runs themselves


def train(config: Config, *, cache: str | None = None, name: str | None = None, overwrite: bool = False,
          progress: bool = True, cli_options: dict | None = None, resume: str | Path | None = None,
          notify: Callable[[str], None] = say) -> Path:
    """Train the binding projector on one cache namespace; returns the run directory.

    `resume` (a run name or directory) continues that run from its last.pt instead of starting one.
    """
    t = config.train
    prefix = cache if cache is not None else t.cache
    last = None
    if resume is not None:
        run_dir, ns, last = _resume_target(config, resume, prefix, name, overwrite)
        name = run_dir.name
    else:
        name = run_name(name)
        run_dir = config.runs_dir / name
        if run_dir.exists() and not overwrite:  # refuse before any work
            raise RunError(f"{run_dir} already exists; choose another --name or pass --overwrite to replace it")
        ns = select_namespace(config.cache_dir, prefix, config, say=notify)
    if error := clip_memory_error(len(ns.committed_keys()), ns.audio_shape, ns.video_shape, t, available_memory()):
        raise RunError(error)
    pairs = load_pairs(ns, keep_clips=t.pooling == "attention" or t.clip_dropout > 0)
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
        notify("warning: the test split is empty; `mvbind eval` will have nothing to test this run on")
    if counts["val"] <= int(t.select_metric[1:]):
        notify(f"warning: the val split has {counts['val']} items, so val {t.select_metric.upper()} is trivially "
               "perfect and cannot pick a checkpoint; use a smaller train.select_metric or a larger val split")

    spec = ProjectorSpec.from_train_config(t, audio_shape=pairs.audio_shape, video_shape=pairs.video_shape)
    if resume is not None:
        _check_same_split(run_dir, pairs, split)
        done = trim_log(run_dir / "metrics.jsonl", last["epoch"] if last else 0)
        notify(f"resuming {name} after epoch {done}" if last else
               f"resuming {name}: no epoch had finished, starting from the first")
        with torch.random.fork_rng(devices=[]):
            result = _fit(config, spec, pairs, groups, split, run_dir, progress, notify, last)
        return _finish(config, run_dir, result, notify)

    claim_run_dir(run_dir, overwrite)
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
    return _finish(config, run_dir, result, notify)


def _finish(config: Config, run_dir: Path, result: dict, notify: Callable[[str], None]) -> Path:
    """final_metrics.json (the run is complete), the training curves, and the closing notice."""
    t = config.train
    write_json(run_dir / "final_metrics.json", result)
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    plot_curves(records, run_dir / "curves.png", select_metric=t.select_metric, title=run_dir.name)
    best = result["best_val"]
    notify(f"best epoch {result['best_epoch']}: val R@{t.select_metric[1:]} video->music "
           f"{best['video_to_music'][f'R@{t.select_metric[1:]}']:.3f}, music->video "
           f"{best['music_to_video'][f'R@{t.select_metric[1:]}']:.3f} ({result['stop_reason']})")
    return run_dir


def _resume_target(config: Config, resume: str | Path, prefix: str, name: str | None,
                   overwrite: bool) -> tuple[Path, Namespace, dict | None]:
    """The run to resume, its namespace and its last.pt; refuses (one line) what can't be continued exactly."""
    if overwrite:
        raise RunError("--resume continues a run and --overwrite replaces one; give one of them")
    run_dir = find_run(config, resume)
    if name is not None and name != run_dir.name:
        raise RunError(f"--resume {resume} continues the run {run_dir.name}; leave out --name {name}")
    if (run_dir / "final_metrics.json").exists():
        raise RunError(f"{run_dir}: the run finished (final_metrics.json is written); nothing to resume; "
                       "start a new run with --name")
    changed = changed_settings(_read(run_dir, "config.json"), config)
    if changed:
        raise RunError(f"{run_dir}: settings differ from the run's ({'; '.join(changed)}); resume with the "
                       f"settings in {run_dir / 'config.json'} or start a new run with --name")
    recorded = _read(run_dir, "cache.json")
    fingerprint = recorded["fingerprint"]
    if prefix and not fingerprint.startswith(prefix):
        raise RunError(f"{run_dir}: the run was trained on cache {fingerprint[:16]}, not on --cache {prefix}; "
                       "leave out --cache to resume on the run's own namespace")
    ns = None
    for where in (config.cache_dir, Path(recorded.get("cache_dir", config.cache_dir))):
        try:
            ns = FeatureCache(where).find(fingerprint)
            break
        except CacheError:
            continue
    if ns is None:
        raise RunError(f"{run_dir}: its cache namespace {fingerprint[:16]} is not in {config.cache_dir} or "
                       f"{recorded.get('cache_dir')}; point paths.cache at the cache the run was trained on")
    return run_dir, ns, load_last(run_dir / "last.pt")


def _check_same_split(run_dir: Path, pairs: PairSet, split: Split) -> None:
    """A resumed run must see the very items it started with: the cache must not have changed since."""
    recorded = _read(run_dir, "split.json")
    for part in ("train", "val", "test"):
        now = pairs.keys[split.indices(part)].tolist()
        if now != recorded.get(part):
            raise RunError(f"{run_dir}: the {part} split now has {len(now)} items, the run started with "
                           f"{len(recorded.get(part, []))} (the cache namespace changed); start a new run with --name")


def _fit(config: Config, spec: ProjectorSpec, pairs: PairSet, groups: MusicGroups, split: Split, run_dir: Path,
         progress: bool, notify: Callable[[str], None], last: dict | None = None) -> dict:
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
        params = param_groups(model, t.weight_decay, t.branch_lr_scale)
        branch_groups = [g["branch"] for g in params]
        opt = torch.optim.AdamW(params, lr=t.lr, betas=(0.9, 0.98), eps=1e-6,
                                fused=True)  # CLIP's betas and eps; fused: one kernel per step on CPU
        train_idx, val_idx = split.indices("train"), split.indices("val")
        tv, ta = _inputs(pairs, train_idx, spec.pooling, clips=t.clip_dropout > 0)
        tg = torch.from_numpy(relabel(groups.labels[train_idx]))
        vv, va = _inputs(pairs, val_idx, spec.pooling)
        vv, va = vv.to(device), va.to(device)
        if spec.pooling == "mean":  # the train split's copy is all that reads clips now: let the rest go
            pairs.video_clips = pairs.audio_clips = None
        val_groups = relabel(groups.labels[val_idx])
        tv, ta, tg = tv.to(device), ta.to(device), tg.to(device)
        if not t.learn_temperature:
            model.logit_scale.requires_grad_(False)
        n, bs = len(train_idx), t.batch_size
        steps = n // bs  # drop the last partial batch: every step sees bs - 1 negatives
        total = steps * t.epochs
        warmup = int(round(t.warmup_epochs * steps))
        gen = torch.Generator().manual_seed(t.seed)

        def origin() -> int:
            """The epoch after which the current learning-rate schedule began (a new-run phase restarts it)."""
            return max([phase_epochs[j - 1] for j in range(1, phase + 1) if plan[j].start == "init"], default=0)

        def schedule(i: int) -> float:
            return lr_at(i - origin() * steps, base=t.lr, floor=t.min_lr, warmup=warmup, total=total)

        start = restore(last, model, opt, gen, device) if last is not None else Progress()
        resumed_at = start.resumed_at + [start.epoch] if last is not None else []
        best_score, best_epoch, best_val, bad, step = (start.best_score, start.best_epoch, start.best_val, start.bad,
                                                       start.step)
        best_key = (best_score, -start.best_loss)  # val R@K, ties broken by the lower val loss
        phase_key = best_key if start.phase_best is None else tuple(start.phase_best)  # this phase's best
        phase_losses = list(start.phase_losses)  # the lowest val loss of each phase so far
        plan, phase, phase_epochs = phases(t), start.phase, list(start.phase_epochs)
        soup = t.soup and is_rerun(plan) and len(plan) == 2  # with plateau drops after them, no soup
        enter_phase(model, opt, branch_groups, plan[phase], t.branch_lr_scale)
        early_stop = f"early stop: no better val R@{select_k} for {t.patience} epochs" + (
            f" ({len(plan)} phases)" if len(plan) > 1 else "")
        stopped = bool(t.patience and bad >= t.patience)  # killed after its last checkpoint, before the end
        stop_reason = early_stop if stopped else f"ran all {t.epochs} epochs" + (
            " of its last phase's schedule" if origin() else "")
        log_path = run_dir / "metrics.jsonl"
        val_groups_t = torch.from_numpy(val_groups).to(device)

        def embed_val() -> tuple[torch.Tensor, torch.Tensor, float]:
            """The val split through the model as it is now: both embeddings and the val loss."""
            ve, ae = encode(model, vv, va)
            return ve, ae, val_loss(loss_fn, ve, ae, model.logit_scale.detach().exp(), val_groups_t, batch_size=bs)

        def recall(ve: torch.Tensor, ae: torch.Tensor) -> tuple[dict, float]:
            """Val recall both ways, and the selection score (mean R@K of the two directions)."""
            r_v2m, r_m2v = retrieval_ranks(ve.cpu(), ae.cpu(), val_groups, chunk_mb=config.eval.chunk_mb)
            val = val_summary(r_v2m, r_m2v, ks)
            return val, (val["video_to_music"][f"R@{select_k}"] + val["music_to_video"][f"R@{select_k}"]) / 2
        t_start = time.perf_counter()
        epoch = start.epoch
        while not stopped and epoch < origin() + t.epochs:
            epoch += 1
            t_epoch = time.perf_counter()
            bar = tqdm(total=steps, desc=f"epoch {epoch}/{origin() + t.epochs}", unit="step", disable=not progress,
                       leave=True, dynamic_ncols=True, file=sys.stderr)
            loss_sum, lr = train_epoch(model, opt, loss_fn, tv, ta, tg, batch_size=bs, generator=gen,
                                       lr_of_step=schedule, first_step=step, max_logit_scale=t.max_logit_scale,
                                       clip_dropout=t.clip_dropout,
                                       bar=bar if progress else None)
            step += steps
            train_seconds = time.perf_counter() - t_epoch
            mean_loss = loss_sum / max(steps, 1)
            if not math.isfinite(mean_loss):
                bar.close()
                raise RunError(f"training diverged at epoch {epoch} (loss {mean_loss}); lower train.lr (now {t.lr})")
            ve, ae, v_loss = embed_val()
            val, score = recall(ve, ae)
            key = (score, -v_loss)
            phase_losses[phase:] = [min(phase_losses[phase:] + [v_loss])]
            if phase and plan[phase].start == "init":
                # a second projector: its epochs are candidates once its val loss has gone below every earlier
                # phase's lowest (the loss, less noisy than R@K on a small val split, picks the projector; then
                # its own best R@K epoch replaces best.pt, even when a lower R@K than the earlier projector's)
                improved = key > phase_key and phase_losses[phase] < min(phase_losses[:phase])
            else:
                improved = key > best_key
            if progress:
                bar.set_postfix_str(f"loss {mean_loss:.4f} val R@{select_k} {score:.3f}{' *' if improved else ''}")
                bar.close()
            record = {"epoch": epoch, "step": step, "phase": phase, "train_loss": mean_loss, "val_loss": v_loss,
                      "lr": lr * plan[phase].lr_factor,
                      "logit_scale": float(model.logit_scale.detach().exp()), "val": val,
                      f"val_r{select_k}_mean": score,
                      "improved": improved, "train_seconds": round(train_seconds, 4),
                      "epoch_seconds": round(time.perf_counter() - t_epoch, 4)}
            with open(log_path, "a") as f:
                f.write(json.dumps(record) + "\n")
            if improved:
                best_key, best_score, best_epoch, best_val = key, score, epoch, val
                # a later phase that starts from the best epoch needs its optimiser state too
                resumes_best = any(p.start == "best" for p in plan[phase + 1:])
                save_checkpoint(run_dir / "best.pt", model, fingerprint=pairs.fingerprint, epoch=epoch,
                                metrics={"val": val, "select": t.select_metric, "score": score},
                                training={"optimizer": opt.state_dict()} if resumes_best else None)
            if key > phase_key:
                phase_key, bad = key, 0
                if soup and phase == 1:  # the residual run's own best epoch, for the soup
                    save_checkpoint(run_dir / RESIDUAL_BEST, model, fingerprint=pairs.fingerprint, epoch=epoch,
                                    metrics={"val": val, "select": t.select_metric, "score": score, "val_loss": v_loss})
            else:
                bad += 1
            if t.patience and bad >= t.patience and phase + 1 < len(plan):
                # a plateau ends this phase; last.pt below records where the next one begins
                phase, bad, phase_key = phase + 1, 0, (-1.0, -math.inf)
                phase_epochs.append(epoch)
                if soup and phase == 1:  # best.pt is the linear run's best until the residual run beats it
                    copy_atomic(run_dir / "best.pt", run_dir / LINEAR_BEST)
                best_ck = read_checkpoint(run_dir / "best.pt") if plan[phase].start == "best" else {}
                begin_phase(plan[phase], model, opt, gen, seed=t.seed, best=best_ck)
                enter_phase(model, opt, branch_groups, plan[phase], t.branch_lr_scale)
                notify(f"val plateau after epoch {epoch}: phase {phase + 1} of {len(plan)} starts from "
                       + (f"epoch {best_epoch}'s weights" if plan[phase].start == "best" else "the initial weights"))
            now = Progress(epoch, step, best_score, best_epoch, best_val, bad,
                           start.seconds + time.perf_counter() - t_start, resumed_at, phase, phase_epochs,
                           -best_key[1], list(phase_key), phase_losses)
            save_checkpoint(run_dir / "last.pt", model, fingerprint=pairs.fingerprint, epoch=epoch,
                            metrics={"val": val, "select": t.select_metric, "score": score},
                            training=training_state(now, opt, gen, device))
            if t.patience and bad >= t.patience:
                stop_reason, stopped = early_stop, True
        soup_record = None
        if soup and (run_dir / LINEAR_BEST).exists() and (run_dir / RESIDUAL_BEST).exists():
            lin, res = read_checkpoint(run_dir / LINEAR_BEST), read_checkpoint(run_dir / RESIDUAL_BEST)
            enter_phase(model, opt, branch_groups, plan[1], t.branch_lr_scale)
            losses, lowest = [], None  # the linear run's weight in the soup is the one with the lowest val loss
            for w in SOUP_WEIGHTS:
                model.load_state_dict(soup_state(lin["state_dict"], res["state_dict"], w))
                ve, ae, v_loss = embed_val()
                losses.append(v_loss)
                if lowest is None or v_loss < lowest[0]:
                    lowest = (v_loss, w, ve, ae)
            v_loss, weight, ve, ae = lowest
            model.load_state_dict(soup_state(lin["state_dict"], res["state_dict"], weight))
            val, score = recall(ve, ae)
            kept = v_loss < min(phase_losses)
            soup_record = {"linear_epoch": lin["epoch"], "residual_epoch": res["epoch"], "linear_weight": weight,
                           "val_loss": v_loss, "val_loss_by_weight": dict(zip(map(str, SOUP_WEIGHTS), losses)),
                           "lowest_val_loss": phase_losses, f"val_r{select_k}_mean": score, "val": val,
                           "kept": kept}
            if kept:
                best_score, best_epoch, best_val = score, res["epoch"], val
                save_checkpoint(run_dir / "best.pt", model, fingerprint=pairs.fingerprint, epoch=res["epoch"],
                                metrics={"val": val, "select": t.select_metric, "score": score, "soup": {
                                    "linear_epoch": lin["epoch"], "residual_epoch": res["epoch"],
                                    "linear_weight": weight}})
            notify(f"soup of the linear run's epoch {lin['epoch']} ({weight:g}) and the residual run's epoch "
                   f"{res['epoch']} ({1 - weight:g}): "
                   f"val loss {v_loss:.4f} against the runs' lowest {', '.join(f'{x:.4f}' for x in phase_losses)}"
                   f" -> {'kept as best.pt' if kept else 'not kept'} (val R@{select_k} {score:.3f})")
        return {"run": run_dir.name, "fingerprint": pairs.fingerprint, "best_epoch": best_epoch,
                "best_val": best_val, "select_metric": t.select_metric, "best_score": best_score,
                "epochs_run": epoch, "steps": step, "stop_reason": stop_reason,
                "logit_scale": float(model.logit_scale.detach().exp()),
                "pairs": {"train": int(n), "val": int(len(val_idx)), "test": int(len(split.indices("test")))},
                "resumed_after_epochs": resumed_at, "phase_changes_after_epochs": phase_epochs, "soup": soup_record,
                "seconds": round(start.seconds + time.perf_counter() - t_start, 3)}
    finally:
        torch.set_num_threads(threads_before)
