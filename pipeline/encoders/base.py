"""What every encoder shares: the `Prepared` inputs of one item, and the calls that dispatch to the
encoder named by `encoder.name` (see `mvbind.pipeline.encoders` for the registry and the contract)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from mvbind.errors import MvbindError
from mvbind.pipeline.config import Config
from mvbind.pipeline.encoders import get_encoder

SCHEMA = 1  # bump when the meaning of stored embeddings changes


# The modalities stage one stores per item (one per-clip array each in a cache shard).
MODALITIES = ("audio", "video")


@dataclass
class Prepared:
    """One item's model inputs by modality; a modality without input says why in `missing`.

    audio: (clips, 1, mel, frames) for ImageBind; video: (clips·crops, 3, T, H, W); other encoders
    put their own per-clip inputs under the same keys. An input may also be a compact form that the
    embedder finishes on its device (`len()` = its rows, `pin_memory()`, `to(device)`; see
    pipeline.encoders.imagebind.compact).
    """

    inputs: dict[str, torch.Tensor]
    duration: float
    missing: dict[str, str] = field(default_factory=dict)  # modality -> why it has no input
    audio_starts: np.ndarray | None = None  # music-library windows: start (s) of each audio row

    def pin_memory(self) -> Prepared:
        """The same inputs in page-locked memory (the DataLoader's pin thread calls this), so the copy to
        a GPU is a DMA that overlaps compute."""
        return Prepared({m: x.pin_memory() for m, x in self.inputs.items()}, self.duration, self.missing,
                        self.audio_starts)

    def get(self, modality: str) -> torch.Tensor | None:
        return self.inputs.get(modality)

    def reason(self, modality: str) -> str:
        return self.missing.get(modality, "") or (f"no {modality}" if modality not in self.inputs else "")


def prepared(duration: float, *, starts: np.ndarray | None = None, **by_modality) -> Prepared:
    """Build a Prepared from `modality=tensor_or_reason` keywords: a tensor is an input, a string
    is why that modality is missing (e.g. `prepared(3.0, audio=spec, video="no video stream")`)."""
    inputs = {m: x for m, x in by_modality.items() if x is not None and not isinstance(x, str)}
    missing = {m: x for m, x in by_modality.items() if isinstance(x, str)}
    return Prepared(inputs, float(duration), missing, starts)


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


