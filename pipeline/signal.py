"""The `signal` encoder: hand-crafted audio (librosa) and video (OpenCV) features per clip."""

from dataclasses import dataclass


@dataclass(frozen=True)
class SignalSettings:
    pass
