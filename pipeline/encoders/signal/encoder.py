"""The `signal` encoder: hand-crafted librosa audio and OpenCV video statistics per clip (CPU only),
on the same clip timing as ImageBind; a fast offline baseline and the demo's encoder."""

from __future__ import annotations

import dataclasses

import numpy as np

from mvbind.errors import MvbindError
from mvbind.pipeline.config.schema import SignalSettings
from mvbind.pipeline.config.validate import check_settings
from mvbind.pipeline.encoders.signal.features import (
    _audio_spec,
    _video_spec,
    audio_feature_names,
    audio_features,
    video_feature_names,
    video_features,
    waveform_features,
)


def signal_settings(config, *, download: bool = False, progress: bool = True) -> dict:
    """The cache-namespace settings of the signal encoder (everything that changes a feature)."""
    from mvbind.pipeline.encoders.base import SCHEMA

    s = config.signal
    check_settings(s)
    a, v = config.audio, config.video
    return {
        "schema": SCHEMA,
        "encoder": {"name": "signal", "version": s.version},
        "signal": dataclasses.asdict(s),
        "audio": {"clip_duration": a.clip_duration, "clips_per_video": a.clips_per_video,
                  "sample_rate": s.sample_rate, "features": audio_feature_names(s)},
        "video": {"clip_duration": v.clip_duration, "clips_per_video": v.clips_per_video, "crops": 1,
                  "size": s.frame_size, "remove_borders": s.remove_borders, "features": video_feature_names(s)},
        "shapes": {"audio": [a.clips_per_video, len(_audio_spec(s))],
                   "video": [v.clips_per_video, len(_video_spec(s))]},
    }


def warm_up(settings: SignalSettings) -> None:
    """Import librosa (numba) and compile its kernels in the main process before the DataLoader
    forks its workers: the workers inherit them instead of each paying seconds, and numba/LLVM is
    never first initialised inside a forked child (which can crash it)."""
    import cv2  # noqa: F401
    import librosa.beat  # noqa: F401
    import librosa.feature  # noqa: F401
    import librosa.onset  # noqa: F401

    import mvbind.pipeline.encoders.imagebind.audio  # noqa: F401

    clicks = np.zeros(int(settings.sample_rate * max(2.0, settings.min_tempo_window + 0.5)), np.float32)
    clicks[:: settings.sample_rate // 2] = 1.0
    waveform_features(clicks, settings, clip_duration=1.0, clips_per_video=1)


class SignalPreparer:
    """path -> Prepared with the features as tensors (CPU; pickled into worker processes)."""

    def __init__(self, config):
        self.settings: SignalSettings = config.signal
        self.audio_clip = (config.audio.clip_duration, config.audio.clips_per_video)
        self.video_clip = (config.video.clip_duration, config.video.clips_per_video)

    def warm_up(self) -> None:
        warm_up(self.settings)

    def __call__(self, path: str):
        import torch

        from mvbind.pipeline.encoders.base import prepared

        audio = video = None
        audio_reason = video_reason = ""
        duration = 0.0
        try:
            v = video_features(path, self.settings, clip_duration=self.video_clip[0],
                               clips_per_video=self.video_clip[1])
            video, duration = torch.from_numpy(v.features), float(v.duration)
        except MvbindError as err:
            video_reason = str(err)
        try:
            a = audio_features(path, self.settings, clip_duration=self.audio_clip[0],
                               clips_per_video=self.audio_clip[1])
            audio = torch.from_numpy(a.features)
            duration = duration or float(a.duration)
        except MvbindError as err:
            audio_reason = str(err)
        return prepared(duration, audio=audio if audio is not None else audio_reason,
                        video=video if video is not None else video_reason)


class SignalEmbedder:
    """Identity: the prepared features are the embeddings."""

    def __init__(self, config, *, progress: bool = True):
        import torch

        check_settings(config.signal)
        self.device = torch.device("cpu")

    def embed(self, items) -> tuple[list[np.ndarray | None], list[np.ndarray | None]]:
        def out(x):
            return None if x is None else np.ascontiguousarray(x.numpy(), dtype=np.float32)

        return {m: [out(it.get(m)) for it in items] for m in ("audio", "video")}


class SignalBackend:
    """The encoder contract (see mvbind.pipeline.encoders)."""

    uses_device = False
    settings = staticmethod(signal_settings)

    @staticmethod
    def warm_up(config) -> None:
        warm_up(config.signal)

    @staticmethod
    def preparer(config) -> SignalPreparer:
        check_settings(config.signal)
        return SignalPreparer(config)

    @staticmethod
    def embedder(config, *, progress: bool = True) -> SignalEmbedder:
        return SignalEmbedder(config, progress=progress)

    @staticmethod
    def window_inputs(path: str, config, layout):
        import torch

        from mvbind.pipeline.encoders.signal.features import decode_mono, window_features

        mono = decode_mono(path, config.signal)
        duration = len(mono) / config.signal.sample_rate
        starts = layout.starts(duration)
        feats = window_features(mono, config.signal, starts=starts, clip_duration=layout.length)
        return torch.from_numpy(feats.features), starts, duration


ENCODER = SignalBackend
