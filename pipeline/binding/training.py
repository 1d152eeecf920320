"""The training loop's parts: groups and splits from settings, batched encoding, schedule, one epoch."""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from mvbind.pipeline.binding.fastops import l2_normalize, masked_clip_sum
from mvbind.pipeline.binding.groups import MusicGroups, find_groups
from mvbind.pipeline.binding.loss import BindingLoss
from mvbind.pipeline.binding.metrics import summarize
from mvbind.pipeline.binding.pairs import PairSet
from mvbind.pipeline.binding.projector import BindingModel
from mvbind.pipeline.binding.splits import Split, assign_splits
from mvbind.pipeline.config import Config


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


def val_loss(loss_fn: BindingLoss, video: torch.Tensor, audio: torch.Tensor, logit_scale: torch.Tensor,
             groups: torch.Tensor, *, batch_size: int) -> float:
    """The training loss on held-out embeddings, averaged over consecutive batches of the training batch size,
    so it compares with the train loss (the same number of negatives per item). A remainder shorter than a
    batch is left out, unless it is all there is."""
    size = min(batch_size, len(video))
    with torch.no_grad():
        losses = [loss_fn(video[s:s + size], audio[s:s + size], logit_scale, groups[s:s + size])
                  for s in range(0, len(video) - size + 1, size)]
    return float(torch.stack(losses).mean()) if losses else float("nan")


def val_summary(v2m: np.ndarray, m2v: np.ndarray, ks) -> dict:
    return {"video_to_music": summarize(v2m, ks), "music_to_video": summarize(m2v, ks)}


def relabel(labels: np.ndarray) -> np.ndarray:
    return np.unique(labels, return_inverse=True)[1].astype(np.int64)


# -- training ----------------------------------------------------------------------------
@dataclass
class _Data:
    video: torch.Tensor  # (n, dv) pooled float32, or (n, cv, dv) float16 clips for attention pooling
    audio: torch.Tensor
    groups: torch.Tensor  # (n,) int64


def _inputs(pairs: PairSet, idx: np.ndarray, pooling: str, clips: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """The rows `idx` as the model takes them: (n, clips, dim) float16 for attention pooling or when `clips`
    (clip dropout pools each step), else (n, dim) pooled float32."""
    if pooling == "attention" or clips:
        return torch.from_numpy(pairs.video_clips[idx]), torch.from_numpy(pairs.audio_clips[idx])
    return (torch.from_numpy(np.ascontiguousarray(pairs.video[idx])),
            torch.from_numpy(np.ascontiguousarray(pairs.audio[idx])))


def available_memory() -> int | None:
    """Bytes of memory available to a new allocation (Linux MemAvailable), or None where unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def clip_memory_error(items: int, audio_shape, video_shape, t, available: int | None) -> str | None:
    """One line saying why the clips of `items` items can't be held in memory for training, or None.

    Attention pooling and clip dropout read every item's fp16 clips (not their means) at every step; the load
    briefly holds about twice that. More than half of the available memory is refused before anything loads."""
    if not (t.pooling == "attention" or t.clip_dropout > 0) or available is None:
        return None
    need = items * (audio_shape[0] * audio_shape[1] + video_shape[0] * video_shape[1]) * 2
    if need <= available / 2:
        return None
    if t.pooling == "attention":
        why, fix = 'train.pooling = "attention"', 'set train.pooling = "mean" and train.clip_dropout = 0'
    else:
        why, fix = f"train.clip_dropout = {t.clip_dropout}", "set train.clip_dropout = 0 (training reads means)"
    return (f"{why} keeps every item's clips in memory: {need / 1e9:.1f} GB for {items} items, more than half of the "
            f"{available / 1e9:.1f} GB available; {fix}")


def lr_at(step: int, *, base: float, floor: float, warmup: int, total: int) -> float:
    """Linear warm-up over `warmup` steps, then cosine decay from `base` to `floor` at `total`."""
    if step < warmup:
        return base * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return floor + 0.5 * (base - floor) * (1 + math.cos(math.pi * progress))


@dataclass(frozen=True)
class Phase:
    """One stretch of training between validation plateaus (`phases`)."""

    branch: bool  # the residual heads' MLP branches train (else they are skipped: the heads are linear)
    lr_factor: float = 1.0  # times the scheduled learning rate
    start: str = "best"  # how it begins: "best" = best.pt's weights and optimiser state, the schedule goes
    # on; "init" = a new run: the initial weights, a fresh optimiser, the seed's random states, the schedule
    # (warm-up, cosine over `epochs`) from its start


def phases(t) -> list[Phase]:
    """The phases of a run (`train.branch_start`, `train.plateau_drops`). A phase ends when it has not
    improved on itself (val R@K, ties broken by val loss) for `train.patience` epochs; the last one's end
    ends the run. best.pt is the best epoch over all phases. With `patience = 0` there are no plateaus:
    one phase, all epochs, the branch trains throughout."""
    if not t.patience:
        return [Phase(True, start="init")]
    if t.projector == "residual" and t.branch_start in ("plateau", "rerun"):
        # the linear map alone first (exactly the linear projector's run), then the branch
        out = [Phase(False, start="init"), Phase(True, start="best" if t.branch_start == "plateau" else "init")]
    else:
        out = [Phase(True, start="init")]
    return out + [Phase(True, t.plateau_lr_factor ** (i + 1)) for i in range(t.plateau_drops)]


def is_rerun(plan: list[Phase]) -> bool:
    """The plan trains two projectors from the same start: the linear run, then the residual run."""
    return len(plan) > 1 and not plan[0].branch and plan[1].start == "init"


def soup_state(linear: dict, residual: dict, weight: float = 0.5) -> dict:
    """One residual head computing, before normalisation, the weighted mean of the linear run's head and the
    residual run's: weight · W_L x + (1 - weight) · (W_R x + U_R g(x)) = W x + U g(x) with W the mean of the
    two linear maps and U = (1 - weight) · U_R, the branch otherwise the residual run's. Every other weight
    (pooling, logit scale) is the same weighted mean. Both state dicts come from one residual model."""
    out = {}
    for key, r in residual.items():
        if ".branch." in key:
            out[key] = r * (1 - weight) if key.endswith(".branch.fc2.weight") else r.clone()
        else:
            out[key] = weight * linear[key] + (1 - weight) * r
    return out


def enter_phase(model: BindingModel, opt: torch.optim.Optimizer, branch_groups: list[bool], phase: Phase,
                branch_lr_scale: float) -> None:
    """Set the model's branches and each optimiser group's learning-rate scale for `phase`."""
    model.set_branch(phase.branch)
    for group, is_branch in zip(opt.param_groups, branch_groups, strict=True):
        group["lr_scale"] = phase.lr_factor * ((branch_lr_scale if phase.branch else 0.0) if is_branch else 1.0)


def begin_phase(phase: Phase, model: BindingModel, opt: torch.optim.Optimizer, generator: torch.Generator, *,
                seed: int, best: dict) -> None:
    """Put model, optimiser and random states where `phase` begins (`best`: best.pt's contents)."""
    if phase.start == "best":
        model.load_state_dict(best["state_dict"])
        opt.load_state_dict(best["training"]["optimizer"])
        return
    torch.manual_seed(seed)  # as the run began: the same draws give the same initial weights
    fresh = BindingModel(model.spec)
    model.load_state_dict(fresh.state_dict())
    opt.state.clear()
    generator.manual_seed(seed)


def clip_mask(batch: int, clips: int, p: float, generator: torch.Generator) -> torch.Tensor:
    """(batch, clips) bool: each clip kept with probability 1 - p; a row that would keep none keeps the clip
    with the highest draw (so every row keeps one, and a row's kept count is never biased towards one clip)."""
    draw = torch.rand(batch, clips, generator=generator)
    keep = draw >= p
    empty = ~keep.any(1)
    if bool(empty.any()):
        keep[empty, draw[empty].argmax(1)] = True
    return keep


def train_epoch(model: BindingModel, opt: torch.optim.Optimizer, loss_fn: BindingLoss, video: torch.Tensor,
                audio: torch.Tensor, groups: torch.Tensor | None, *, batch_size: int, generator: torch.Generator,
                lr_of_step: Callable[[int], float], first_step: int = 0, max_logit_scale: float = 100.0,
                clip_dropout: float = 0.0, prefetch: bool = True, bar: tqdm | None = None) -> tuple[float, float]:
    """One pass over the pairs in a seeded random order, full batches only (the rest is dropped).

    With `clip_dropout` > 0, `video` and `audio` are per-clip (n, clips, dim) and each step pools a random
    subset of every item's clips (`clip_mask`, drawn from `generator` after the epoch's order, step by step).
    With mean pooling on the CPU, `prefetch` and fewer torch threads than cores (`train.threads = 1`, the
    default), the next step's pooling runs in a thread while this step trains (the numba kernel releases the
    GIL); the masks are still drawn in step order on this thread, so the numbers are those of
    `prefetch=False`, bit for bit. Returns (summed loss, last learning rate)."""
    model.train()
    n = len(video)
    steps = n // batch_size
    # Without a shared track anywhere the loss is plain CLIP: say so once instead of letting every
    # step build a batch x batch group mask and read back its sum.
    if groups is not None and not bool((torch.bincount(groups) > 1).any()):
        groups = None
    order = torch.randperm(n, generator=generator).to(video.device)
    pool_here = clip_dropout > 0 and model.spec.pooling == "mean"  # the model then takes (B, dim) inputs

    def draw(s: int) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        idx = order[s * batch_size:(s + 1) * batch_size]
        if clip_dropout <= 0:
            return idx, None, None
        return (idx, clip_mask(len(idx), video.shape[1], clip_dropout, generator).to(video.device),
                clip_mask(len(idx), audio.shape[1], clip_dropout, generator).to(video.device))

    def pooled(idx: torch.Tensor, v_mask: torch.Tensor, a_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return (l2_normalize(masked_clip_sum(video, idx, v_mask)), l2_normalize(masked_clip_sum(audio, idx, a_mask)))

    # only with a core to spare: beside torch's own threads on every core it slows both down
    spare = torch.get_num_threads() < len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else False
    pool = ThreadPoolExecutor(1, thread_name_prefix="clip-pool") if (
        pool_here and prefetch and spare and video.device.type == "cpu" and steps > 1) else None
    loss_sum = torch.zeros((), device=video.device)
    lr = lr_of_step(first_step)
    ahead = None  # the next step's (idx, masks, pooled inputs in the thread)
    try:
        for s in range(steps):
            if ahead is None:
                idx, v_mask, a_mask = draw(s)
                ready = pool.submit(pooled, idx, v_mask, a_mask) if pool is not None else None
            else:
                idx, v_mask, a_mask, ready = ahead
            if pool is not None and s + 1 < steps:
                nxt = draw(s + 1)
                ahead = (*nxt, pool.submit(pooled, *nxt))
            lr = lr_of_step(first_step + s)
            for group in opt.param_groups:
                group["lr"] = lr * group.get("lr_scale", 1.0)
            if pool_here:  # pooled from the kept clips only
                xv, xa = ready.result() if ready is not None else pooled(idx, v_mask, a_mask)
                v_emb, a_emb = model.encode_video(xv), model.encode_audio(xa)
            else:
                v_emb = model.encode_video(video.index_select(0, idx), v_mask)
                a_emb = model.encode_audio(audio.index_select(0, idx), a_mask)
            loss = loss_fn(v_emb, a_emb, model.logit_scale.exp(),
                           None if groups is None else groups.index_select(0, idx))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            model.clamp_logit_scale(max_logit_scale)
            loss_sum += loss.detach()
            if bar is not None:
                bar.update(1)
                if s % 8 == 0 or s == steps - 1:
                    bar.set_postfix_str(f"loss {loss.item():.4f}", refresh=False)
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
    return float(loss_sum), lr
