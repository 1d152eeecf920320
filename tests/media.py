"""Test media helpers: real ffmpeg-made files (the generator lives in pipeline.synth)."""

from pathlib import Path

from tests.synth import make_video, run_ffmpeg

FIXTURES = Path(__file__).parent / "fixtures"

__all__ = ["FIXTURES", "make_video", "run_ffmpeg"]
