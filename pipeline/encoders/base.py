"""What every encoder shares: the `Prepared` inputs of one item, and the calls that dispatch to the
encoder named by `encoder.name` (see `mvbind.pipeline.encoders` for the registry and the contract)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from mvbind.errors import MvbindError
from mvbind.pipeline.config import Config
from mvbind.pipeline.encoders import get_encoder

SCHEMA = 1  # bump when the meaning of stored embeddings changes


@dataclass
class Prepared:
    """One item's model inputs, or why a modality is missing."""

    audio: torch.Tensor | None  # (clips, 1, mel, frames)
    video: torch.Tensor | None  # (clips * crops, 3, T, H, W)
    duration: float
    audio_reason: str = ""  # why audio is None ("no audio stream", ...)
    video_reason: str = ""
    audio_starts: np.ndarray | None = None  # music-library windows: start (s) of each audio row (pipeline.windows)


def extractor_settings(config: Config, *, download: bool = False, progress: bool = True) -> dict:
    """The cache-namespace settings of `config`'s encoder: everything that changes an embedding,
    plus the stored shapes {"audio": [clips, dim], "video": [clips, dim]}.

    With pretrained weights this needs the weights file (its sha256 is part of the identity);
    `download=True` fetches it when absent, otherwise a missing file is a one-line error.
    """
    return backend(config).settings(config, download=download, progress=progress)


def make_preparer(config: Config):
    """The picklable CPU step for `config`'s encoder: path -> Prepared."""
    return backend(config).preparer(config)


def make_embedder(config: Config, *, progress: bool = True):
    """The model step for `config`'s encoder: list[Prepared] -> (audio list, video list)."""
    return backend(config).embedder(config, progress=progress)


def backend(config: Config):
    """The encoder named by encoder.name (its module imported on first use: each pulls its own libraries)."""
    return get_encoder(config.encoder.name)


def pick_device(setting: str) -> torch.device:
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(setting)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise MvbindError(f"setting encoder.device: {setting} requested but CUDA is not available; use cpu or auto")
    return device


