"""Compact ImageBind inputs: what a decoding worker ships when the transforms run on the device.

With ``encoder.transforms = "device"`` a worker stops at integers and raw samples, and the
embedder finishes ImageBind's inputs on ``encoder.device`` right before the forward pass:

* video: the uint8 source pixels the bilinear resize reads — only the rows and columns its two
  taps per output pixel touch, so at most 2·h × 2·w pixels per frame whatever the source size
  (for 16:9 at 224: 448 × 796 × 3 = 1.07 MB per frame, against 1.81 MB for the three float32
  224² crops it becomes) — plus the taps. The device does /255, the two-tap lerps, CLIP
  normalisation and the crops, in the same float32 operations and order as the CPU reference
  (`vision._resize`, `vision._clips_and_crops`), so it gives the same values to float32 rounding;
  on a CPU device, bit for bit.
* audio: each clip's 16 kHz channel-0 waveform after the mean subtraction (`audio.clip_waves`),
  float32; the device runs the Kaldi filterbank, pad/cut and normalisation (`audio.clip_melspec`).
  Resampling stays in the worker: it is per-file work with a long filter.

Why not uint8 at model resolution (2.7 MB a video)? Rounding the resized frame to uint8 moves
every input value by up to 0.5/255 before normalisation: an input change ~10× larger than the
fp16 storage step of the embeddings, so the cache would depend on where the transforms ran.
The tap gather keeps the cache independent of it (`tests/test_device_transforms.py`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from mvbind.pipeline.config.schema import AudioSettings, VideoSettings


@dataclass(frozen=True)
class CompactVideo:
    """One video's compact vision input; `finish()` makes ImageBind's (clips·crops, 3, T, s, s)."""

    pixels: Tensor  # (F, H', W', 3) uint8: the needed frames, only the source rows/columns the taps read
    rows: tuple[Tensor, Tensor, Tensor, Tensor]  # i0, i1 (int64 into H'), w0, w1 (float32), one per output row
    cols: tuple[Tensor, Tensor, Tensor, Tensor]  # the same per output column (into W')
    clip_frames: Tensor  # (clips, T) int64: which of the F frames each clip keeps, in order
    offsets: tuple[tuple[int, int], ...]  # (y, x) of each crop in the resized frame
    size: int
    mean: Tensor  # (3,) float32
    std: Tensor

    def __len__(self) -> int:
        return len(self.clip_frames) * len(self.offsets)

    @property
    def nbytes(self) -> int:
        return self.pixels.nbytes

    def to(self, device: torch.device | str, non_blocking: bool = False) -> CompactVideo:
        move = lambda t: t.to(device, non_blocking=non_blocking)  # noqa: E731
        return replace(self, pixels=move(self.pixels), rows=tuple(map(move, self.rows)),
                       cols=tuple(map(move, self.cols)), clip_frames=move(self.clip_frames),
                       mean=move(self.mean), std=move(self.std))

    def pin_memory(self) -> CompactVideo:
        return replace(self, pixels=self.pixels.pin_memory())

    def finish(self) -> Tensor:
        """ImageBind's vision input, on the device the pixels are on (float32)."""
        i0, i1, w0, w1 = self.rows
        top = self.pixels.index_select(1, i0).float() / 255  # (F, h, W', 3)
        bottom = self.pixels.index_select(1, i1).float() / 255
        rows = (top * w0[:, None, None] + bottom * w1[:, None, None]).permute(0, 3, 1, 2)  # (F, 3, h, W')
        c0, c1, v0, v1 = self.cols
        resized = rows.index_select(3, c0) * v0 + rows.index_select(3, c1) * v1  # (F, 3, h, w)
        normed = (resized - self.mean[:, None, None]) / self.std[:, None, None]
        clips, frames = self.clip_frames.shape
        kept = normed.index_select(0, self.clip_frames.reshape(-1)).unflatten(0, (clips, frames))  # (C, T, 3, h, w)
        s = self.size
        crops = [kept[..., y:y + s, x:x + s] for y, x in self.offsets]
        out = torch.stack(crops, dim=1)  # (C, K, T, 3, s, s)
        return out.permute(0, 1, 3, 2, 4, 5).reshape(clips * len(self.offsets), 3, frames, s, s)


@dataclass(frozen=True)
class CompactAudio:
    """One video's clip waveforms; `finish()` makes ImageBind's (clips, 1, mel, frames)."""

    waves: Tensor  # (clips, longest) float32, zero-padded on the right
    lengths: tuple[int, ...]  # samples per clip
    settings: AudioSettings

    def __len__(self) -> int:
        return len(self.lengths)

    @property
    def nbytes(self) -> int:
        return self.waves.nbytes

    def to(self, device: torch.device | str, non_blocking: bool = False) -> CompactAudio:
        return replace(self, waves=self.waves.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> CompactAudio:
        return replace(self, waves=self.waves.pin_memory())

    def finish(self) -> Tensor:
        from mvbind.pipeline.encoders.imagebind.audio import clip_melspec

        specs = [clip_melspec(self.waves[i, :n], self.settings) for i, n in enumerate(self.lengths)]
        return torch.stack(specs).unsqueeze(1)


def finish(x: Tensor | CompactVideo | CompactAudio, device: torch.device, *, non_blocking: bool = True) -> Tensor:
    """Any input (reference tensor or compact) as the model input on `device`."""
    if isinstance(x, Tensor):
        return x.to(device, non_blocking=non_blocking)
    return x.to(device, non_blocking=non_blocking).finish()


def video_pixels(path: str | Path, settings: VideoSettings | None = None, *,
                 threads: int = 0) -> tuple[CompactVideo, float]:
    """Decode `path`'s needed frames and keep the uint8 pixels the resize reads: (input, duration)."""
    from mvbind.pipeline.encoders.imagebind.vision import _decode, _scaled_size, _taps, crop_offsets

    settings = settings or VideoSettings()
    d = _decode(Path(path), settings, threads)
    frames = [d.frame(i) for i in d.needed]
    height, width = frames[0].shape[:2]
    new_h, new_w = _scaled_size(height, width, settings.size)
    rows, row_idx = _gathered(*_taps(height, new_h))
    cols, col_idx = _gathered(*_taps(width, new_w))
    pixels = np.stack([f[row_idx][:, col_idx] for f in frames])  # (F, H', W', 3) uint8
    position = {frame: k for k, frame in enumerate(d.needed)}
    clip_frames = torch.tensor([[position[i] for i in kept] for kept in d.plan.frame_indices], dtype=torch.int64)
    compact = CompactVideo(
        pixels=torch.from_numpy(pixels), rows=rows, cols=cols, clip_frames=clip_frames,
        offsets=tuple(crop_offsets(new_h, new_w, settings)), size=settings.size,
        mean=torch.tensor(settings.mean, dtype=torch.float32), std=torch.tensor(settings.std, dtype=torch.float32),
    )
    return compact, d.count / d.fps


def audio_clips(path: str | Path, settings: AudioSettings | None = None) -> tuple[CompactAudio, float]:
    """Decode `path`'s audio and keep each clip's waveform as the filterbank reads it: (input, duration)."""
    from mvbind.pipeline.encoders.imagebind.audio import clip_waves
    from mvbind.pipeline.media.audio import decode_audio

    settings = settings or AudioSettings()
    waveform, rate = decode_audio(path)
    clips = clip_waves(waveform, rate, settings)
    waves = torch.nn.utils.rnn.pad_sequence(clips.waves, batch_first=True)  # zeros on the right
    return CompactAudio(waves, tuple(len(w) for w in clips.waves), settings), clips.duration


def _gathered(i0: np.ndarray, i1: np.ndarray, w0: np.ndarray, w1: np.ndarray
              ) -> tuple[tuple[Tensor, Tensor, Tensor, Tensor], np.ndarray]:
    """Bilinear taps re-indexed into the source lines they read, and those lines."""
    lines = np.unique(np.concatenate([i0, i1]))
    j0, j1 = np.searchsorted(lines, i0), np.searchsorted(lines, i1)
    taps = (torch.from_numpy(j0.astype(np.int64)), torch.from_numpy(j1.astype(np.int64)),
            torch.from_numpy(np.ascontiguousarray(w0, dtype=np.float32)),
            torch.from_numpy(np.ascontiguousarray(w1, dtype=np.float32)))
    return taps, lines
