"""Settings: one typed object loaded from pipeline.toml, overridden by flags, validated once.

Every key of every section can be overridden on the command line with
``--set section.key=value``; common keys also have their own flag. Errors name the key and
say what would be valid.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import tomllib
import types
import typing
from pathlib import Path
from typing import Any

from mvbind.errors import ConfigError
from mvbind.pipeline.config.paths import expand_path, mvbind_home
from mvbind.pipeline.config.schema import SECTIONS, Config
from mvbind.pipeline.config.validate import validate

# The shipped defaults: mvbind/pipeline.toml (package data; in a checkout, the top-level pipeline.toml).
DEFAULT_CONFIG = Path(str(importlib.resources.files("mvbind") / "pipeline.toml"))


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
        where = f"{origin} [{name}] {_shown(key)}"
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
    sections = SECTIONS
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
                f"--set {_shown(dotted)}: expected section.key with section one of {', '.join(sections)}"
            )
        merged[name][key] = value
    built = {
        name: _build_section(name, cls, merged[name], origin if not overrides else f"{origin}/flags")
        for name, cls in sections.items()
    }
    config = Config(**built, source=origin)
    validate(config)
    return config


def settings_toml(overrides: dict[str, Any], header: str = "") -> str:
    """A pipeline.toml holding just these {"section.key": value} settings (the rest stay the defaults).

    Values are str, bool, int, float or lists of those; a JSON string literal is a valid TOML basic string."""
    import json

    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        if isinstance(v, (list, tuple)):
            return "[" + ", ".join(value(x) for x in v) + "]"
        return json.dumps(str(v), ensure_ascii=False)

    sections: dict[str, list[str]] = {}
    for dotted, v in overrides.items():
        name, _, key = dotted.partition(".")
        if name not in SECTIONS or not key:
            raise ConfigError(f"{dotted}: expected section.key with section one of {', '.join(SECTIONS)}")
        sections.setdefault(name, []).append(f"{key} = {value(v)}")
    lines = [f"# {line}" for line in header.splitlines()]
    for name, entries in sections.items():
        lines += ["", f"[{name}]", *entries]
    return "\n".join(lines).lstrip("\n") + "\n"


def to_dict(config: Config) -> dict[str, Any]:
    """The resolved settings as plain data (for run directories and `cache info`)."""
    return {name: dataclasses.asdict(getattr(config, name)) for name in SECTIONS}


__all__ = ["DEFAULT_CONFIG", "Config", "build_config", "expand_path", "load_config", "mvbind_home", "to_dict"]


def _shown(text: str) -> str:
    """A key as typed, quoted when it is empty or holds whitespace or control characters (one line)."""
    return text if text and text.isprintable() and not any(c.isspace() for c in text) else repr(text)
