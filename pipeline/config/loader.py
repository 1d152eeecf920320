"""Settings: one typed object loaded from pipeline.toml, overridden by flags, validated once.

Every key of every section can be overridden on the command line with
``--set section.key=value``; common keys also have their own flag. Errors name the key and
say what would be valid.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import os
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mvbind.errors import ConfigError

# The shipped defaults: mvbind/pipeline.toml (package data; in a checkout, the top-level pipeline.toml).
DEFAULT_CONFIG = Path(str(importlib.resources.files("mvbind") / "pipeline.toml"))
ENCODERS = ("imagebind", "signal")
ARCHS = ("huge", "small", "tiny")  # pipeline.imagebind presets; only huge has pretrained weights


def mvbind_home() -> Path:
    """Where data lives by default: $MVBIND_HOME, else ~/.cache/mvbind (outside the source tree)."""
    return Path(os.environ.get("MVBIND_HOME") or Path.home() / ".cache" / "mvbind")


def expand_path(value: str) -> Path:
    """Expand ${MVBIND_HOME}, other environment variables and ~ in a configured path."""
    env = dict(os.environ)
    env.setdefault("MVBIND_HOME", str(mvbind_home()))
    return Path(os.path.expanduser(_expand(value, env)))


def _expand(value: str, env: dict[str, str]) -> str:
    for name, val in env.items():
        value = value.replace("${" + name + "}", val)
    return value


@dataclass
class PathsConfig:
    cache: str = "${MVBIND_HOME}/cache"
    runs: str = "${MVBIND_HOME}/runs"


@dataclass
class EncoderConfig:
    name: str = "imagebind"
    arch: str = "huge"  # huge | small | tiny (small and tiny: random init only)
    weights: str = ""  # path; "" = download to ${MVBIND_HOME}/imagebind_huge.pth; "random" = random init
    seed: int = 0  # used only for random init
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: str = "auto"  # auto (fp16 on CUDA, fp32 on CPU) | fp32 | fp16 | bf16
    batch_size: int = 8  # videos per forward pass


@dataclass
class ExtractConfig:
    workers: int = 2  # decoding processes feeding the model; 0 = decode in the main process
    prefetch: int = 4  # items each worker decodes ahead
    shard_size: int = 256  # items per HDF5 shard
    shard_seconds: float = 300.0  # also commit a shard at least this often (bounds work lost to a crash)
    num_shards: int = 1  # partitions: item belongs to partition hash(key) mod num_shards
    shard_index: int = 0
    retry_failed: bool = False


@dataclass
class Config:
    paths: PathsConfig = field(default_factory=PathsConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    audio: Any = None  # pipeline.audio.AudioSettings
    video: Any = None  # pipeline.video.VideoSettings
    signal: Any = None  # pipeline.signal.SignalSettings (used when encoder.name = "signal")
    extract: ExtractConfig = field(default_factory=ExtractConfig)
    train: Any = None  # pipeline.train_config.TrainConfig
    eval: Any = None  # pipeline.train_config.EvalConfig
    library: Any = None  # pipeline.library_config.LibraryConfig
    recommend: Any = None  # pipeline.library_config.RecommendConfig
    source: str = "defaults"

    @property
    def cache_dir(self) -> Path:
        return expand_path(self.paths.cache)

    @property
    def runs_dir(self) -> Path:
        return expand_path(self.paths.runs)


def _section_types() -> dict[str, type]:
    from mvbind.pipeline.config.library import LibraryConfig, RecommendConfig
    from mvbind.pipeline.config.stage_two import EvalConfig, TrainConfig
    from mvbind.pipeline.encoders.imagebind.audio import AudioSettings
    from mvbind.pipeline.encoders.imagebind.vision import VideoSettings
    from mvbind.pipeline.encoders.signal.features import SignalSettings

    return {
        "paths": PathsConfig,
        "encoder": EncoderConfig,
        "audio": AudioSettings,
        "video": VideoSettings,
        "signal": SignalSettings,
        "extract": ExtractConfig,
        "train": TrainConfig,
        "eval": EvalConfig,
        "library": LibraryConfig,
        "recommend": RecommendConfig,
    }


def _coerce(where: str, value: Any, annotation: Any) -> Any:
    """Convert a TOML or command-line value to the field's declared type."""
    if isinstance(annotation, str):
        annotation = {"int": int, "float": float, "bool": bool, "str": str}.get(annotation, annotation)
    origin = typing.get_origin(annotation)
    if origin in (tuple, list):
        if isinstance(value, str):
            value = [v for v in value.strip("[]()").split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        (inner, *_rest) = typing.get_args(annotation) or (Any,)
        return tuple(_coerce(where, v, inner) for v in value)
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on", "false", "0", "no", "off"):
            return value.lower() in ("true", "1", "yes", "on")
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if annotation is int:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        try:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected an integer, got {value!r}") from None
    if annotation is float:
        try:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected a number, got {value!r}") from None
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    if isinstance(annotation, types.UnionType) or origin is typing.Union:
        return value
    return value


def _build_section(name: str, cls: type, values: dict[str, Any], origin: str) -> Any:
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in values.items():
        where = f"{origin} [{name}] {key}"
        if key not in known:
            raise ConfigError(f"{where}: unknown setting; valid keys in [{name}]: {', '.join(sorted(known))}")
        kwargs[key] = _coerce(where, value, hints[key])
    return cls(**kwargs)


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> Config:
    """Read pipeline.toml (or `path`), apply `overrides` ({"section.key": value}), validate."""
    path = Path(path) if path else DEFAULT_CONFIG
    if not path.exists():
        raise ConfigError(f"{path}: config file not found; pass --config PATH or create pipeline.toml")
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: not valid TOML ({err}); fix the file") from None
    return build_config(raw, overrides, origin=str(path.name))


def build_config(raw: dict[str, Any], overrides: dict[str, Any] | None = None, origin: str = "config") -> Config:
    sections = _section_types()
    merged: dict[str, dict[str, Any]] = {name: {} for name in sections}
    for name, values in raw.items():
        if name not in sections:
            raise ConfigError(f"{origin}: unknown section [{name}]; valid sections: {', '.join(sections)}")
        if not isinstance(values, dict):
            raise ConfigError(f"{origin}: [{name}] must be a table of settings")
        merged[name].update(values)
    for dotted, value in (overrides or {}).items():
        if value is None:
            continue
        name, _, key = dotted.partition(".")
        if name not in sections or not key:
            raise ConfigError(
                f"--set {dotted}: expected section.key with section one of {', '.join(sections)}"
            )
        merged[name][key] = value
    built = {
        name: _build_section(name, cls, merged[name], origin if not overrides else f"{origin}/flags")
        for name, cls in sections.items()
    }
    config = Config(**built, source=origin)
    validate(config)
    return config


def _check(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"setting {key}: {message}")


def validate(config: Config) -> None:
    """Range and choice checks; each error names the key and what would be valid."""
    from mvbind.pipeline.config.library import validate_library
    from mvbind.pipeline.config.stage_two import validate_stage_two

    validate_stage_two(config)
    validate_library(config)
    enc, ext, a, v = config.encoder, config.extract, config.audio, config.video
    _check(enc.name in ENCODERS, "encoder.name", f"unknown encoder {enc.name!r}; choose one of {', '.join(ENCODERS)}")
    _check(enc.arch in ARCHS, "encoder.arch", f"unknown architecture {enc.arch!r}; choose {', '.join(ARCHS)}")
    _check(
        enc.device == "auto" or enc.device == "cpu" or enc.device.startswith("cuda") or enc.device == "mps",
        "encoder.device",
        f"{enc.device!r} is not a device; use auto, cpu, cuda or cuda:N",
    )
    _check(enc.precision in ("auto", "fp32", "fp16", "bf16"), "encoder.precision", "use auto, fp32, fp16 or bf16")
    _check(enc.batch_size >= 1, "encoder.batch_size", f"must be >= 1, got {enc.batch_size}")
    _check(enc.name != "imagebind" or enc.arch == "huge" or enc.weights == "random", "encoder.weights",
           "pretrained weights exist only for arch 'huge'; set encoder.weights = \"random\" for arch 'tiny'")
    _check(ext.workers >= 0, "extract.workers", f"must be >= 0, got {ext.workers}")
    _check(ext.prefetch >= 1, "extract.prefetch", f"must be >= 1, got {ext.prefetch}")
    _check(ext.shard_size >= 1, "extract.shard_size", f"must be >= 1, got {ext.shard_size}")
    _check(ext.shard_seconds > 0, "extract.shard_seconds", f"must be > 0, got {ext.shard_seconds}")
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


def to_dict(config: Config) -> dict[str, Any]:
    """The resolved settings as plain data (for run directories and `cache info`)."""
    return {
        name: dataclasses.asdict(getattr(config, name))
        for name in ("paths", "encoder", "audio", "video", "signal", "extract", "train", "eval", "library",
                     "recommend")
    }
