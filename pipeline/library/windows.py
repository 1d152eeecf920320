"""Music-library windows: a track's audio taken in windows along it, through stage one's cache.

A library track is one cache item (content-hash key, like a video) whose audio is a variable
number of windows: window length = the encoder's audio clip length (`audio.clip_duration`),
one every `library.hop` seconds from 0 while the window fits, at most `library.max_windows`
(a longer track gets that many windows spread evenly over it). The layout is part of the track
namespace's fingerprint, so tracks and videos live in different namespaces of one cache and
re-indexing the same files extracts nothing.

Each window is computed exactly as one audio clip of its encoder:
- imagebind: the track is resampled to 16 kHz once, and each window's samples go through
  `pipeline.audio.waveform_inputs` as a one-clip file (scalar mean subtraction, Kaldi fbank,
  pad/cut to 204 frames, normalisation); a window starting where one of ImageBind's own clips
  starts gives that clip's input exactly.
- signal: `pipeline.signal.window_features`, the per-clip feature function on each window.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np
import torch

from mvbind.cache import fingerprint
from mvbind.errors import MvbindError
from mvbind.pipeline.config import Config
from mvbind.pipeline.encoders import get_encoder

WINDOW_VERSION = 1  # bump when the window layout or per-window computation changes


@dataclass(frozen=True)
class WindowLayout:
    length: float  # seconds (= the encoder's audio clip length)
    hop: float  # seconds between starts
    max_windows: int

    @classmethod
    def from_config(cls, config: Config) -> WindowLayout:
        return cls(float(config.audio.clip_duration), float(config.library.hop), int(config.library.max_windows))

    def starts(self, duration: float) -> np.ndarray:
        """Window start times (seconds) for a track of `duration` seconds: at least one."""
        if duration <= self.length:
            return np.zeros(1, np.float64)
        span = duration - self.length
        n = int(math.floor(span / self.hop + 1e-9)) + 1
        if n <= self.max_windows:
            return np.round(np.arange(n) * self.hop, 6)
        if self.max_windows == 1:
            return np.zeros(1, np.float64)
        return np.round(np.linspace(0.0, span, self.max_windows), 6)

    def to_dict(self) -> dict:
        return {"version": WINDOW_VERSION, **dataclasses.asdict(self)}


def window_settings(config: Config, layout: WindowLayout | None = None, *, download: bool = False,
                    progress: bool = True) -> dict:
    """The track namespace's settings: the encoder's extractor settings + the window layout.

    `windows.video_namespace` is the fingerprint of the encoder's (video) namespace: a library
    is compatible with runs trained on that namespace. Stored shapes: audio (1, dim) holds the
    mean of a track's windows; video is absent (mask false).
    """
    from mvbind.pipeline.encoders.base import extractor_settings

    layout = layout or WindowLayout.from_config(config)
    base = extractor_settings(config, download=download, progress=progress)
    return {**base, "windows": {**layout.to_dict(), "video_namespace": fingerprint(base)},
            "shapes": {"audio": [1, base["shapes"]["audio"][1]], "video": [1, base["shapes"]["video"][1]]}}


class WindowPreparer:
    """path -> Prepared with one audio input per window and no video (CPU; pickled into workers).

    The encoder named by encoder.name turns a track into its window inputs (`window_inputs`)."""

    def __init__(self, config: Config, layout: WindowLayout):
        self.config = config
        self.layout = layout

    def warm_up(self) -> None:
        warm = getattr(get_encoder(self.config.encoder.name), "warm_up", None)
        if warm is not None:
            warm(self.config)

    def __call__(self, path: str):
        # Hundreds of small per-window ops: one thread is several times faster than a contended pool
        # (decoding workers already run single-threaded; this covers extract.workers = 0).
        threads = torch.get_num_threads()
        if threads != 1:
            torch.set_num_threads(1)
        try:
            return self._prepare(path)
        finally:
            if threads != 1:
                torch.set_num_threads(threads)

    def _prepare(self, path: str):
        from mvbind.pipeline.encoders.base import prepared

        try:
            audio, starts, duration = get_encoder(self.config.encoder.name).window_inputs(path, self.config,
                                                                                          self.layout)
        except MvbindError as err:
            return prepared(0.0, audio=str(err), video="library track: audio only")
        return prepared(duration, audio=audio, video="library track: audio only",
                        starts=np.asarray(starts, np.float32))


def make_window_preparer(config: Config, layout: WindowLayout | None = None) -> WindowPreparer:
    return WindowPreparer(config, layout or WindowLayout.from_config(config))
