"""Encoders for stage one, by name: a registry (light: no model code is imported until used).

An encoder is a module exposing `ENCODER`, an object with
- `settings(config, *, download, progress) -> dict`: everything that changes an embedding (the
  cache fingerprint) plus the stored shapes {"audio": [clips, dim], "video": [views, dim]};
- `preparer(config)`: a picklable CPU step, path -> `Prepared` (runs in decoding workers);
- `embedder(config, *, progress)`: the model step, list[Prepared] -> {modality: per-item arrays};
- `window_inputs(path, config, layout)`: a music track's audio inputs, one per library window;
- `uses_device`: whether the model runs on `encoder.device` (pinned host memory on CUDA).
Adding an encoder is adding one module and one line here (or `register_encoder` from outside).
"""

from __future__ import annotations

import importlib
from typing import Any

_MODULES: dict[str, str] = {
    "imagebind": "mvbind.pipeline.encoders.imagebind.encoder",
    "signal": "mvbind.pipeline.encoders.signal.encoder",
}


def encoder_names() -> tuple[str, ...]:
    return tuple(_MODULES)


def register_encoder(name: str, module: str) -> None:
    """Make `encoder.name = NAME` use the module `module` (which defines ENCODER)."""
    _MODULES[name] = module


def get_encoder(name: str) -> Any:
    """The ENCODER object of the encoder called `name` (its module imported on first use)."""
    from mvbind.errors import ConfigError

    if name not in _MODULES:
        raise ConfigError(f"setting encoder.name: unknown encoder {name!r}; choose one of {', '.join(_MODULES)}")
    return importlib.import_module(_MODULES[name]).ENCODER
