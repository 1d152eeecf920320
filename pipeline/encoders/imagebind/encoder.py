"""The `imagebind` encoder: ImageBind's exact audio and vision inputs (CPU, in workers) and the
frozen audio + vision towers (on encoder.device), per-clip embeddings with upstream's postprocessing."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from mvbind.errors import MvbindError
from mvbind.pipeline.config import Config, expand_path, mvbind_home
from mvbind.pipeline.encoders.base import SCHEMA, Prepared, pick_device, prepared

if TYPE_CHECKING:
    from mvbind.pipeline.library.windows import WindowLayout


def weights_setting(config: Config) -> Path | None:
    """The configured weights file (None = random init)."""
    if config.encoder.weights == "random":
        return None
    if config.encoder.weights:
        return expand_path(config.encoder.weights)
    return mvbind_home() / "imagebind_huge.pth"


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
        self.compact = transforms_on_device(config)  # ship uint8 pixels and clip waves (pipeline...compact)

    def __call__(self, path: str) -> Prepared:
        audio = video = None
        audio_reason = video_reason = ""
        duration = 0.0
        try:
            video, duration = self._video(path)
        except MvbindError as err:  # NoStreamError included: the reason says which
            video_reason = str(err)
        try:
            audio, audio_duration = self._audio(path)
            duration = duration or audio_duration
        except MvbindError as err:
            audio_reason = str(err)
        return prepared(duration, audio=audio if audio is not None else audio_reason,
                        video=video if video is not None else video_reason)

    def _video(self, path: str):
        if self.compact:
            from mvbind.pipeline.encoders.imagebind.compact import video_pixels

            return video_pixels(path, self.video_settings, threads=self.decode_threads)
        from mvbind.pipeline.encoders.imagebind.vision import video_inputs

        v = video_inputs(path, self.video_settings, threads=self.decode_threads)
        return v.frames, float(v.duration)

    def _audio(self, path: str):
        if self.compact:
            from mvbind.pipeline.encoders.imagebind.compact import audio_clips

            return audio_clips(path, self.audio_settings)
        from mvbind.pipeline.encoders.imagebind.audio import audio_inputs

        a = audio_inputs(path, self.audio_settings)
        return a.melspec, float(a.duration)


def transforms_on_device(config: Config) -> bool:
    """Whether workers ship compact inputs and the embedder finishes them (encoder.transforms)."""
    setting = config.encoder.transforms
    if setting == "auto":
        return pick_device(config.encoder.device).type == "cuda"
    return setting == "device"


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
        self.chunk = enc.forward_clips  # clips per forward call: bounds activation memory
        self.transfer_seconds = 0.0  # inputs to the device and, for compact inputs, their transforms there

    @torch.inference_mode()
    def _inputs(self, present: list) -> torch.Tensor:
        """The batch's inputs of one modality, on the device (compact ones finished there)."""
        from mvbind.pipeline.encoders.imagebind.compact import finish

        t0 = time.perf_counter()
        x = torch.cat([finish(p, self.device) for p in present])
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)  # so the time is the transfer's, not the next forward's
        self.transfer_seconds += time.perf_counter() - t0
        return x

    @torch.inference_mode()
    def _run(self, fn, x: torch.Tensor) -> np.ndarray:
        outs = []
        for i in range(0, len(x), self.chunk):
            with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype is not None):
                outs.append(fn(x[i : i + self.chunk]).float())
        return torch.cat(outs).cpu().numpy()

    def embed(self, items: list[Prepared]) -> dict[str, list[np.ndarray | None]]:
        """Per modality, per item: audio (clips, d) and video (clips*crops, d) embeddings, None where missing."""
        towers = {"audio": self.model.embed_audio, "video": self.model.embed_vision}
        return {m: self._embed_modality(items, m, fn) for m, fn in towers.items()}

    def _embed_modality(self, items: list[Prepared], modality: str, fn) -> list[np.ndarray | None]:
        present = [it.get(modality) for it in items if it.get(modality) is not None]
        if not present:
            return [None] * len(items)
        flat = self._run(fn, self._inputs(present))
        out, offset = [], 0
        for it in items:
            x = it.get(modality)
            if x is None:
                out.append(None)
            else:
                out.append(flat[offset : offset + len(x)])
                offset += len(x)
        return out


class ImageBindBackend:
    """The encoder contract (see mvbind.pipeline.encoders)."""

    uses_device = True
    settings = staticmethod(imagebind_settings)

    @staticmethod
    def preparer(config: Config) -> ImageBindPreparer:
        return ImageBindPreparer(config)

    @staticmethod
    def embedder(config: Config, *, progress: bool = True) -> ImageBindEmbedder:
        return ImageBindEmbedder(config, progress=progress)

    @staticmethod
    def window_inputs(path: str, config: Config, layout) -> tuple[torch.Tensor, np.ndarray, float]:
        from mvbind.pipeline.media.audio import decode_audio

        waveform, rate = decode_audio(path)
        return imagebind_windows(waveform, rate, config.audio, layout)


def imagebind_windows(waveform: torch.Tensor, sample_rate: int, settings, layout: WindowLayout
                      ) -> tuple[torch.Tensor, np.ndarray, float]:
    """ImageBind audio inputs of each window: ((windows, 1, mel, frames), starts, duration)."""
    from mvbind.errors import MediaError
    from mvbind.pipeline.encoders.imagebind.audio import waveform_inputs
    from mvbind.pipeline.encoders.imagebind.resample import resample_span, resampled_length

    if waveform.dim() != 2 or waveform.shape[1] == 0:
        raise MediaError("audio stream is empty")
    sr = settings.sample_rate
    n16 = resampled_length(waveform.shape[1], sample_rate, sr)
    full = resample_span(waveform, sample_rate, sr, 0, n16)  # whole track once; windows are slices
    duration = n16 / sr
    starts = layout.starts(duration)
    one_clip = dataclasses.replace(settings, clips_per_video=1)
    width = int(round(layout.length * sr))
    specs = []
    for start in starts:
        a = min(int(round(start * sr)), n16)
        specs.append(waveform_inputs(full[:, a:min(a + width, n16)], sr, one_clip).melspec[0])
    return torch.stack(specs), starts, duration


ENCODER = ImageBindBackend
