"""Encoders for stage one: a picklable CPU `prepare` step (runs in decoding workers) and a
model step (runs where the accelerator is), plus the settings that fingerprint them.

An encoder is chosen by `encoder.name` in pipeline.toml. Each provides:
- `extractor_settings(config)`: everything that changes an embedding (the cache fingerprint);
- a `Preparer`: path -> `Prepared` tensors, CPU only, safe to run in worker processes;
- an `Embedder`: a batch of `Prepared` -> per-clip embeddings (numpy, float32).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mvbind.errors import MvbindError, NoStreamError
from mvbind.pipeline.config import Config, expand_path, mvbind_home

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


def weights_setting(config: Config) -> Path | None:
    """The configured weights file (None = random init)."""
    if config.encoder.weights == "random":
        return None
    if config.encoder.weights:
        return expand_path(config.encoder.weights)
    return mvbind_home() / "imagebind_huge.pth"


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
    """The encoder family named by encoder.name (imported lazily: each pulls its own libraries)."""
    name = config.encoder.name
    if name == "imagebind":
        return ImageBindBackend
    if name == "signal":
        from mvbind.pipeline.encoders.signal.features import SignalBackend

        return SignalBackend
    raise MvbindError(f"setting encoder.name: unknown encoder {name!r}")


def imagebind_settings(config: Config, *, download: bool = False, progress: bool = True) -> dict:
    from mvbind.pipeline.encoders.imagebind.model import imagebind_config
    from mvbind.pipeline.encoders.imagebind.weights import file_digest, resolve_weights

    enc = config.encoder
    path = weights_setting(config)
    if path is None:
        weights = f"random-init seed {enc.seed}"
    else:
        resolved = resolve_weights(str(path) if enc.weights else None, download=download, progress=progress)
        weights = "sha256:" + file_digest(resolved)
    arch = imagebind_config(enc.arch)
    dim = int(arch["out_embed_dim"])
    a, v = config.audio, config.video
    return {
        "schema": SCHEMA,
        "encoder": {"name": enc.name, "arch": enc.arch, "arch_config": arch, "weights": weights},
        "audio": dataclasses.asdict(a),
        "video": dataclasses.asdict(v),
        "shapes": {"audio": [a.clips_per_video, dim], "video": [v.clips_per_video * v.crops, dim]},
    }


class ImageBindPreparer:
    """ImageBind's audio and vision inputs for one file (CPU; pickled into worker processes)."""

    def __init__(self, config: Config):
        self.audio_settings = config.audio
        self.video_settings = config.video
        # One decoder thread per worker process; FFmpeg's own threading when decoding in-process.
        self.decode_threads = 1 if config.extract.workers > 0 else 0

    def __call__(self, path: str) -> Prepared:
        from mvbind.pipeline.encoders.imagebind.audio import audio_inputs
        from mvbind.pipeline.encoders.imagebind.vision import video_inputs

        audio = video = None
        audio_reason = video_reason = ""
        duration = 0.0
        try:
            v = video_inputs(path, self.video_settings, threads=self.decode_threads)
            video, duration = v.frames, float(v.duration)
        except NoStreamError as err:
            video_reason = str(err)
        except MvbindError as err:
            video_reason = str(err)
        try:
            a = audio_inputs(path, self.audio_settings)
            audio = a.melspec
            duration = duration or float(a.duration)
        except NoStreamError as err:
            audio_reason = str(err)
        except MvbindError as err:
            audio_reason = str(err)
        return Prepared(audio, video, duration, audio_reason, video_reason)


def pick_device(setting: str) -> torch.device:
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(setting)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise MvbindError(f"setting encoder.device: {setting} requested but CUDA is not available; use cpu or auto")
    return device


def pick_dtype(setting: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype (None = full fp32)."""
    if setting == "auto":
        return torch.float16 if device.type == "cuda" else None
    return {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}[setting]


class ImageBindEmbedder:
    """Frozen ImageBind audio + vision encoders: per-clip embeddings, postprocessing kept."""

    def __init__(self, config: Config, *, progress: bool = True):
        from mvbind.pipeline.encoders.imagebind.model import build_imagebind
        from mvbind.pipeline.encoders.imagebind.weights import load_weights, resolve_weights

        enc = config.encoder
        self.device = pick_device(enc.device)
        self.dtype = pick_dtype(enc.precision, self.device)
        path = weights_setting(config)
        t0 = time.perf_counter()
        if path is None:
            model = build_imagebind(enc.arch, seed=enc.seed)
        else:
            with torch.device("meta"):  # no 2.9 GB random init only to be overwritten
                model = build_imagebind(enc.arch)
            load_weights(model, resolve_weights(str(path) if enc.weights else None, progress=progress))
        self.model = model.eval().requires_grad_(False).to(self.device)
        self.load_seconds = time.perf_counter() - t0
        self.chunk = 256  # clips per forward call: bounds activation memory

    @torch.inference_mode()
    def _run(self, fn, x: torch.Tensor) -> np.ndarray:
        outs = []
        for i in range(0, len(x), self.chunk):
            part = x[i : i + self.chunk].to(self.device, non_blocking=True)
            with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype is not None):
                outs.append(fn(part).float())
        return torch.cat(outs).cpu().numpy()

    def embed(self, items: list[Prepared]) -> tuple[list[np.ndarray | None], list[np.ndarray | None]]:
        """Per item: audio (clips, d) and video (clips*crops, d) embeddings, None where missing."""
        return (self._embed_modality(items, "audio", self.model.embed_audio),
                self._embed_modality(items, "video", self.model.embed_vision))

    def _embed_modality(self, items: list[Prepared], attr: str, fn) -> list[np.ndarray | None]:
        present = [getattr(it, attr) for it in items if getattr(it, attr) is not None]
        if not present:
            return [None] * len(items)
        flat = self._run(fn, torch.cat(present))
        out, offset = [], 0
        for it in items:
            x = getattr(it, attr)
            if x is None:
                out.append(None)
            else:
                out.append(flat[offset : offset + len(x)])
                offset += len(x)
        return out


class ImageBindBackend:
    settings = staticmethod(imagebind_settings)

    @staticmethod
    def preparer(config: Config) -> ImageBindPreparer:
        return ImageBindPreparer(config)

    @staticmethod
    def embedder(config: Config, *, progress: bool = True) -> ImageBindEmbedder:
        return ImageBindEmbedder(config, progress=progress)
