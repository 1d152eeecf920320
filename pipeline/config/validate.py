"""The one settings validator: range and choice checks of every section, run once when settings load.

Each failure is a `ConfigError` whose one line names the key (`setting video.crops: must be 1 or 3,
got 2`), whichever way the value came in (pipeline.toml, `--set`, a flag or a notebook).
"""

from __future__ import annotations

import math

from mvbind.errors import ConfigError
from mvbind.pipeline.config.schema import (
    ARCHS,
    BRANCH_STARTS,
    ENGINES,
    EVAL_SPLITS,
    FEATURE_VERSION,
    INDEX_KINDS,
    POOLINGS,
    PREVIEW_AUDIO,
    PROJECTORS,
    SEARCH_KINDS,
    SELECT_METRICS,
    Config,
    EvalConfig,
    LibraryConfig,
    RecommendConfig,
    SignalSettings,
    TrainConfig,
)
from mvbind.pipeline.encoders import encoder_names


def _check(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"setting {key}: {message}")


def validate(config: Config) -> None:
    """Every range and choice check of every section, once; each error names the key and what would be valid."""
    validate_stage_two(config)
    validate_library(config)
    validate_serve(config)
    check_settings(config.signal)
    enc, ext, a, v = config.encoder, config.extract, config.audio, config.video
    names = encoder_names()
    _check(enc.name in names, "encoder.name", f"unknown encoder {enc.name!r}; choose one of {', '.join(names)}")
    _check(enc.arch in ARCHS, "encoder.arch", f"unknown architecture {enc.arch!r}; choose {', '.join(ARCHS)}")
    _check(
        enc.device == "auto" or enc.device == "cpu" or enc.device.startswith("cuda") or enc.device == "mps",
        "encoder.device",
        f"{enc.device!r} is not a device; use auto, cpu, cuda or cuda:N",
    )
    _check(enc.precision in ("auto", "fp32", "fp16", "bf16"), "encoder.precision", "use auto, fp32, fp16 or bf16")
    _check(enc.batch_size >= 1, "encoder.batch_size", f"must be >= 1, got {enc.batch_size}")
    _check(enc.forward_clips >= 1, "encoder.forward_clips", f"must be >= 1, got {enc.forward_clips}")
    _check(enc.transforms in ("auto", "cpu", "device"), "encoder.transforms", "use auto, cpu or device")
    _check(enc.name != "imagebind" or enc.arch == "huge" or enc.weights == "random", "encoder.weights",
           "pretrained weights exist only for arch 'huge'; set encoder.weights = \"random\" for arch 'tiny'")
    _check(ext.workers >= 0, "extract.workers", f"must be >= 0, got {ext.workers}")
    _check(ext.prefetch >= 1, "extract.prefetch", f"must be >= 1, got {ext.prefetch}")
    _check(ext.shard_size >= 1, "extract.shard_size", f"must be >= 1, got {ext.shard_size}")
    _check(ext.shard_seconds > 0, "extract.shard_seconds", f"must be > 0, got {ext.shard_seconds}")
    _check(ext.item_timeout >= 0, "extract.item_timeout", f"must be >= 0 (0 = no limit), got {ext.item_timeout}")
    _check(ext.engine in ENGINES, "extract.engine", f"unknown engine {ext.engine!r}; choose {', '.join(ENGINES)}")
    _check(ext.max_retries >= 0, "extract.max_retries", f"must be >= 0, got {ext.max_retries}")
    _check(ext.write_queue >= 1, "extract.write_queue", f"must be >= 1, got {ext.write_queue}")
    _check(ext.num_shards >= 1, "extract.num_shards", f"must be >= 1, got {ext.num_shards}")
    _check(0 <= ext.shard_index < ext.num_shards, "extract.shard_index",
           f"must be in [0, num_shards={ext.num_shards}), got {ext.shard_index}")
    _check(a.sample_rate > 0, "audio.sample_rate", f"must be > 0, got {a.sample_rate}")
    _check(a.clip_duration > 0, "audio.clip_duration", f"must be > 0, got {a.clip_duration}")
    _check(a.clips_per_video >= 1, "audio.clips_per_video", f"must be >= 1, got {a.clips_per_video}")
    _check(a.std > 0, "audio.std", f"must be > 0, got {a.std}")
    _check(v.clip_duration > 0, "video.clip_duration", f"must be > 0, got {v.clip_duration}")
    _check(v.clips_per_video >= 1, "video.clips_per_video", f"must be >= 1, got {v.clips_per_video}")
    _check(v.frames_per_clip >= 1, "video.frames_per_clip", f"must be >= 1, got {v.frames_per_clip}")
    _check(v.crops in (1, 3), "video.crops", f"must be 1 or 3, got {v.crops}")
    _check(v.size >= 16, "video.size", f"must be >= 16, got {v.size}")
    _check(len(v.mean) == 3 and len(v.std) == 3, "video.mean/video.std", "need three values (R, G, B)")
    if enc.name == "imagebind":
        _check(a.num_mel_bins == 128 and a.target_length == 204, "audio.num_mel_bins/target_length",
               "ImageBind's audio encoder needs 128 mel bins and 204 frames")
        _check(v.size == 224 and v.frames_per_clip == 2, "video.size/frames_per_clip",
               "ImageBind's vision encoder needs 224 px and 2 frames per clip")


def _finite(x: float) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def validate_stage_two(config) -> None:
    """Range checks for [train] and [eval]; errors name the key and what would be valid."""
    t: TrainConfig = config.train
    e: EvalConfig = config.eval
    _check(all(_finite(getattr(t, k)) for k in (
        "val_fraction", "test_fraction", "dropout", "clip_dropout", "lr", "weight_decay", "warmup_epochs", "min_lr",
        "init_temperature", "max_logit_scale", "audio_dup_threshold", "branch_lr_scale", "plateau_lr_factor")),
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
    _check(0 <= t.clip_dropout < 1, "train.clip_dropout", f"must be in [0, 1), got {t.clip_dropout}")
    _check(t.batch_size >= 2, "train.batch_size",
           f"must be >= 2 (a contrastive batch needs negatives), got {t.batch_size}")
    _check(t.epochs >= 1, "train.epochs", f"must be >= 1, got {t.epochs}")
    _check(t.lr > 0, "train.lr", f"must be > 0, got {t.lr}")
    _check(t.weight_decay >= 0, "train.weight_decay", f"must be >= 0, got {t.weight_decay}")
    _check(0 < t.branch_lr_scale <= 10, "train.branch_lr_scale", f"must be in (0, 10], got {t.branch_lr_scale}")
    _check(t.branch_start in BRANCH_STARTS, "train.branch_start",
           f"unknown value {t.branch_start!r}; choose one of {', '.join(BRANCH_STARTS)}")
    _check(t.plateau_drops >= 0, "train.plateau_drops", f"must be >= 0, got {t.plateau_drops}")
    _check(0 < t.plateau_lr_factor < 1, "train.plateau_lr_factor", f"must be in (0, 1), got {t.plateau_lr_factor}")
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


def validate_library(config) -> None:
    """Range and choice checks for [library] and [recommend]; errors name the key."""
    lib: LibraryConfig = config.library
    rec: RecommendConfig = config.recommend
    _check(math.isfinite(lib.hop) and lib.hop > 0, "library.hop", f"must be > 0 seconds, got {lib.hop}")
    _check(lib.max_windows >= 1, "library.max_windows", f"must be >= 1, got {lib.max_windows}")
    _check(lib.index in INDEX_KINDS, "library.index", f"unknown index {lib.index!r}; choose one of "
           f"{', '.join(INDEX_KINDS)}")
    _check(lib.faiss_threshold >= 0, "library.faiss_threshold", f"must be >= 0, got {lib.faiss_threshold}")
    _check(lib.faiss_nlist >= 0, "library.faiss_nlist", f"must be >= 0 (0 = auto), got {lib.faiss_nlist}")
    _check(0 < lib.faiss_target_recall <= 1, "library.faiss_target_recall",
           f"must be in (0, 1], got {lib.faiss_target_recall}")
    _check(lib.faiss_queries >= 1, "library.faiss_queries", f"must be >= 1, got {lib.faiss_queries}")
    _check(rec.k >= 1, "recommend.k", f"must be >= 1, got {rec.k}")
    _check(rec.search in SEARCH_KINDS, "recommend.search", f"unknown search {rec.search!r}; choose one of "
           f"{', '.join(SEARCH_KINDS)}")
    _check(rec.nprobe >= 0, "recommend.nprobe", f"must be >= 0 (0 = tuned at build), got {rec.nprobe}")
    _check(rec.chunk_mb >= 1, "recommend.chunk_mb", f"must be >= 1, got {rec.chunk_mb}")
    _check(rec.preview_audio in PREVIEW_AUDIO, "recommend.preview_audio",
           f"unknown mode {rec.preview_audio!r}; choose replace or mix")
    _check(math.isfinite(rec.text_weight) and 0 <= rec.text_weight <= 1, "recommend.text_weight",
           f"must be in [0, 1] (0 = the video only, 1 = the text only), got {rec.text_weight}")
    _check(math.isfinite(rec.preview_mix_volume) and 0 <= rec.preview_mix_volume <= 4,
           "recommend.preview_mix_volume", f"must be in [0, 4], got {rec.preview_mix_volume}")
    _check(math.isfinite(rec.beat_search) and rec.beat_search >= 0, "recommend.beat_search",
           f"must be >= 0 seconds, got {rec.beat_search}")
    _check(math.isfinite(rec.beat_tolerance) and 0 < rec.beat_tolerance <= 1, "recommend.beat_tolerance",
           f"must be in (0, 1] seconds, got {rec.beat_tolerance}")


def validate_serve(config) -> None:
    """Range checks for [serve]; whether a non-local host is allowed is the server's decision (--allow-remote)."""
    s = config.serve
    _check(bool(s.host.strip()), "serve.host", "must be an address, e.g. 127.0.0.1")
    _check(0 <= s.port <= 65535, "serve.port", f"must be in [0, 65535] (0 = any free port), got {s.port}")
    _check(s.k >= 1, "serve.k", f"must be >= 1, got {s.k}")
    _check(s.max_upload_mb >= 1, "serve.max_upload_mb", f"must be >= 1, got {s.max_upload_mb}")
    _check(s.keep_uploads >= 1, "serve.keep_uploads", f"must be >= 1, got {s.keep_uploads}")
    _check(s.indexed_videos >= 0, "serve.indexed_videos", f"must be >= 0, got {s.indexed_videos}")


def check_settings(s: SignalSettings) -> None:
    """Range checks; each error names the key."""

    def need(ok: bool, key: str, message: str) -> None:
        if not ok:
            raise ConfigError(f"setting signal.{key}: {message}")

    need(s.version == FEATURE_VERSION, "version",
         f"this code computes feature version {FEATURE_VERSION}, got {s.version}")
    need(s.sample_rate >= 8000, "sample_rate", f"must be >= 8000, got {s.sample_rate}")
    need(s.n_fft >= 64 and s.hop_length >= 1 and s.hop_length <= s.n_fft, "n_fft/hop_length",
         "need n_fft >= 64 and 1 <= hop_length <= n_fft")
    need(1 <= s.n_mfcc <= s.n_mels, "n_mfcc", f"must be in [1, n_mels={s.n_mels}], got {s.n_mfcc}")
    need(s.contrast_bands >= 1 and s.contrast_fmin > 0
         and s.contrast_fmin * 2 ** (s.contrast_bands - 1) < s.sample_rate / 2, "contrast_bands/contrast_fmin",
         "the top contrast band must start below the Nyquist frequency")
    need(s.tempo_window > 0 and s.min_tempo_window >= 0, "tempo_window", "must be > 0")
    need(s.frames_per_second > 0, "frames_per_second", f"must be > 0, got {s.frames_per_second}")
    need(s.frame_size >= 16, "frame_size", f"must be >= 16, got {s.frame_size}")
    need(16 <= s.flow_size <= s.frame_size, "flow_size", f"must be in [16, frame_size], got {s.flow_size}")
    need(1 <= s.hue_bins <= 180, "hue_bins", f"must be in [1, 180], got {s.hue_bins}")
    need(0 < s.cut_threshold <= 1, "cut_threshold", f"must be in (0, 1], got {s.cut_threshold}")
    need(0 <= s.border_threshold < 255, "border_threshold", f"must be in [0, 255), got {s.border_threshold}")
