"""Stage-two settings: the [train] and [eval] sections of pipeline.toml.

Nothing here changes an embedding, so none of it selects a cache namespace: every stage-two
experiment (projector, loss, temperature, pooling, split) reuses the cached features.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from mvbind.errors import ConfigError

POOLINGS = ("mean", "attention")
PROJECTORS = ("linear", "mlp")
SELECT_METRICS = ("r1", "r5", "r10", "r25", "r50")
EVAL_SPLITS = ("test", "val", "train")


@dataclass
class TrainConfig:
    cache: str = ""  # fingerprint prefix of the namespace; "" = the namespace of this config's extractor settings
    seed: int = 0  # seeds initialisation, batch order and dropout (CPU runs are bit-for-bit repeatable)
    # split (used only when the manifest gives none): stable hash of each music group's smallest key
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    split_salt: str = "mvbind-split-v1"
    # model
    pooling: str = "mean"  # mean | attention (learned softmax weights over clips; starts as the mean)
    projector: str = "mlp"  # linear | mlp (residual MLP blocks with LayerNorm and dropout)
    embed_dim: int = 256  # shared space
    hidden_dim: int = 1024  # MLP block width
    depth: int = 1  # residual MLP blocks
    dropout: float = 0.1
    # optimisation
    batch_size: int = 256
    epochs: int = 50
    lr: float = 1e-3
    weight_decay: float = 0.1  # AdamW; not applied to biases, LayerNorm gains, the pooling query, logit_scale
    warmup_epochs: float = 1.0  # linear warm-up, then cosine decay to min_lr
    min_lr: float = 0.0
    # loss
    init_temperature: float = 0.07  # CLIP: logit_scale starts at log(1/0.07)
    max_logit_scale: float = 100.0  # CLIP: clamp exp(logit_scale) at 100
    learn_temperature: bool = True
    multi_positive: bool = True  # members of one music group are all positives (never pushed apart)
    # music groups: items sharing a track
    music_id_groups: bool = True  # same non-empty manifest music_id -> one group
    audio_dup_groups: bool = True  # near-identical audio embeddings -> one group
    audio_dup_threshold: float = 0.98  # cosine of mean-pooled cached audio embeddings
    # early stopping on validation recall (with groups)
    select_metric: str = "r10"  # mean of video->music and music->video Recall@K
    patience: int = 5  # epochs without improvement before stopping; 0 = run all epochs
    threads: int = 0  # torch CPU threads; 0 = torch's default
    device: str = "cpu"  # cpu | cuda | cuda:N (repeatable numbers are promised on CPU only)


@dataclass
class EvalConfig:
    ks: tuple[int, ...] = (1, 5, 10, 25, 50)
    split: str = "test"  # which split of each run (or of the namespace, for baselines) is the gallery
    baselines: bool = True  # add chance and zero-shot ImageBind (raw cosine) rows
    chunk_mb: int = 256  # memory for one block of the similarity matrix while ranking
    out: str = ""  # where eval reports go; "" = <paths.runs>/_evals


def _check(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"setting {key}: {message}")


def _finite(x: float) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def validate_stage_two(config) -> None:
    """Range checks for [train] and [eval]; errors name the key and what would be valid."""
    t: TrainConfig = config.train
    e: EvalConfig = config.eval
    _check(all(_finite(getattr(t, k)) for k in (
        "val_fraction", "test_fraction", "dropout", "lr", "weight_decay", "warmup_epochs", "min_lr",
        "init_temperature", "max_logit_scale", "audio_dup_threshold")),
        "train", "numbers must be finite (no nan or inf)")
    _check(0 <= t.val_fraction < 1, "train.val_fraction", f"must be in [0, 1), got {t.val_fraction}")
    _check(0 <= t.test_fraction < 1, "train.test_fraction", f"must be in [0, 1), got {t.test_fraction}")
    _check(t.val_fraction + t.test_fraction < 1, "train.val_fraction/test_fraction",
           f"must leave items for training (sum < 1), got {t.val_fraction} + {t.test_fraction}")
    _check(t.pooling in POOLINGS, "train.pooling",
           f"unknown pooling {t.pooling!r}; choose one of {', '.join(POOLINGS)}")
    _check(t.projector in PROJECTORS, "train.projector",
           f"unknown projector {t.projector!r}; choose one of {', '.join(PROJECTORS)}")
    _check(t.embed_dim >= 1, "train.embed_dim", f"must be >= 1, got {t.embed_dim}")
    _check(t.hidden_dim >= 1, "train.hidden_dim", f"must be >= 1, got {t.hidden_dim}")
    _check(t.depth >= 0, "train.depth", f"must be >= 0, got {t.depth}")
    _check(0 <= t.dropout < 1, "train.dropout", f"must be in [0, 1), got {t.dropout}")
    _check(t.batch_size >= 2, "train.batch_size",
           f"must be >= 2 (a contrastive batch needs negatives), got {t.batch_size}")
    _check(t.epochs >= 1, "train.epochs", f"must be >= 1, got {t.epochs}")
    _check(t.lr > 0, "train.lr", f"must be > 0, got {t.lr}")
    _check(t.weight_decay >= 0, "train.weight_decay", f"must be >= 0, got {t.weight_decay}")
    _check(t.warmup_epochs >= 0, "train.warmup_epochs", f"must be >= 0, got {t.warmup_epochs}")
    _check(0 <= t.min_lr <= t.lr, "train.min_lr", f"must be in [0, train.lr={t.lr}], got {t.min_lr}")
    _check(0 < t.init_temperature, "train.init_temperature", f"must be > 0, got {t.init_temperature}")
    _check(t.max_logit_scale >= 1, "train.max_logit_scale", f"must be >= 1, got {t.max_logit_scale}")
    _check(1 / t.init_temperature <= t.max_logit_scale, "train.init_temperature",
           f"1/init_temperature = {1 / t.init_temperature:g} exceeds train.max_logit_scale = {t.max_logit_scale:g}")
    _check(0 < t.audio_dup_threshold <= 1, "train.audio_dup_threshold",
           f"must be in (0, 1] (a cosine), got {t.audio_dup_threshold}; "
           "set train.audio_dup_groups = false to turn it off")
    _check(t.select_metric in SELECT_METRICS, "train.select_metric",
           f"unknown metric {t.select_metric!r}; choose one of {', '.join(SELECT_METRICS)}")
    _check(t.patience >= 0, "train.patience", f"must be >= 0, got {t.patience}")
    _check(t.threads >= 0, "train.threads", f"must be >= 0, got {t.threads}")
    _check(t.device == "cpu" or t.device == "cuda" or t.device.startswith("cuda:"), "train.device",
           f"{t.device!r} is not a device; use cpu, cuda or cuda:N")
    _check(len(e.ks) >= 1 and all(k >= 1 for k in e.ks), "eval.ks", f"need one or more K >= 1, got {list(e.ks)}")
    _check(list(e.ks) == sorted(set(e.ks)), "eval.ks", f"must be increasing without repeats, got {list(e.ks)}")
    _check(e.split in EVAL_SPLITS, "eval.split", f"unknown split {e.split!r}; choose one of {', '.join(EVAL_SPLITS)}")
    _check(e.chunk_mb >= 1, "eval.chunk_mb", f"must be >= 1, got {e.chunk_mb}")
