"""mvbind.pipeline.media.borders: MVBind's black-border removal, on arrays and on real encoded videos."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from mvbind.pipeline.encoders.imagebind.vision import VideoSettings, video_inputs
from mvbind.pipeline.media.borders import detect_content_box
from mvbind.pipeline.media.ffmpeg import ffmpeg_exe
from tests.media import make_video

RAW = VideoSettings(remove_borders=False)


def ffmpeg_video(path: Path, lavfi: str, vf: str, duration: float = 3) -> Path:
    """An H.264 test video from a lavfi source and a filter chain (with a timeout)."""
    cmd = [ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-nostdin", "-y", "-f", "lavfi", "-i", lavfi,
           "-vf", vf, "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-t", str(duration),
           str(path)]
    subprocess.run(cmd, check=True, timeout=120)
    return path


def near(box, truth, tol: int = 2) -> bool:
    return all(abs(a - b) <= tol for a, b in zip(box, truth, strict=True))


def scene(h: int, w: int, seed: int) -> np.ndarray:
    """Textured bright content: nothing like a flat border."""
    rng = np.random.default_rng(seed)
    return rng.integers(40, 256, (h, w, 3), dtype=np.uint8)


def letterbox(content: np.ndarray, height: int, width: int, level: int = 0) -> np.ndarray:
    canvas = np.full((height, width, 3), level, dtype=np.uint8)
    h, w = content.shape[:2]
    y, x = (height - h) // 2, (width - w) // 2
    canvas[y : y + h, x : x + w] = content
    return canvas


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("borders")


# --------------------------------------------------------------------------------------------
# Arrays


def test_letterbox_and_pillarbox_arrays():
    frames = [letterbox(scene(90, 160, s), 284, 160) for s in range(4)]
    assert detect_content_box(frames) == (0, 97, 160, 187)
    frames = [letterbox(scene(160, 90, s), 160, 284) for s in range(4)]
    assert detect_content_box(frames) == (97, 0, 187, 160)


def test_no_border_keeps_full_frame():
    assert detect_content_box([scene(120, 200, s) for s in range(3)]) == (0, 0, 200, 120)


def test_noise_in_bars_is_ignored():
    frames = [letterbox(scene(90, 160, s), 284, 160, level=3) for s in range(3)]
    rng = np.random.default_rng(1)
    for f in frames:  # compression-like speckles in the bars
        f[:97] += rng.integers(0, 6, f[:97].shape, dtype=np.uint8)
        f[5, 7] = 200  # an isolated hot pixel
    assert detect_content_box(frames) == (0, 97, 160, 187)


def test_thin_borders_are_ignored():
    frames = [letterbox(scene(96, 156, s), 100, 160) for s in range(3)]  # 2 px on every side
    assert detect_content_box(frames) == (0, 0, 160, 100)


def test_black_frames_are_skipped_and_all_black_keeps_full_frame():
    black = np.zeros((284, 160, 3), np.uint8)
    frames = [black, black, letterbox(scene(90, 160, 0), 284, 160)]
    assert detect_content_box(frames) == (0, 97, 160, 187)
    assert detect_content_box([black, black]) == (0, 0, 160, 284)


def test_small_bright_content_on_black_is_not_cropped_to_it():
    frame = np.zeros((360, 640, 3), np.uint8)
    frame[160:200, 300:340] = 255
    assert detect_content_box([frame] * 3) == (0, 0, 640, 360)


def test_dark_scene_regions_are_not_borders():
    rng = np.random.default_rng(0)
    dim = [scene(200, 160, s) for s in range(3)]
    for f in dim:  # a dark but not black top part (night sky, shadow)
        f[:60] = rng.integers(0, 31, (60, 160, 3), dtype=np.uint8)
    assert detect_content_box(dim) == (0, 0, 160, 200)
    textured = [scene(200, 160, s) for s in range(3)]
    checker = (np.indices((60, 160)).sum(axis=0) % 2 * 15).astype(np.uint8)
    for f in textured:  # below the threshold everywhere, but not flat: not a bar
        f[:60] = checker[..., None]
    assert detect_content_box(textured) == (0, 0, 160, 200)


def test_content_in_a_bar_is_kept():
    frames = [letterbox(scene(90, 160, s), 284, 160) for s in range(3)]
    for f in frames:
        f[230:240, 40:120] = 255  # a subtitle in the lower bar
    x0, y0, x1, y1 = detect_content_box(frames)
    assert (y0, y1) == (97, 240)


# --------------------------------------------------------------------------------------------
# Encoded videos (16:9 content in a 9:16 frame and the reverse)


@pytest.fixture(scope="module")
def letterboxed(media):
    source = make_video(media / "source.mp4", size=(360, 202), fps=15, audio_channels=None)
    padded = make_video(media / "letterboxed.mp4", size=(360, 202), fps=15, audio_channels=None, pad=(360, 640))
    return source, padded


def test_letterboxed_video(letterboxed):
    source, padded = letterboxed
    got = video_inputs(padded)
    assert near(got.crop_box, (0, 219, 360, 421)), got.crop_box
    want = video_inputs(source, RAW).frames
    diff = float((got.frames - want).abs().mean())
    uncropped = float((video_inputs(padded, RAW).frames - want).abs().mean())
    print(f"letterbox: mean abs diff to the source {diff:.4f} (without removal {uncropped:.3f})")
    assert diff < 0.05 and uncropped > 0.5


def test_pillarboxed_video(media):
    source = make_video(media / "psource.mp4", size=(202, 360), fps=15, audio_channels=None)
    padded = make_video(media / "pillarboxed.mp4", size=(202, 360), fps=15, audio_channels=None, pad=(640, 360))
    got = video_inputs(padded)
    assert near(got.crop_box, (219, 0, 421, 360)), got.crop_box
    assert float((got.frames - video_inputs(source, RAW).frames).abs().mean()) < 0.05


def test_video_without_borders_is_not_cropped(letterboxed):
    source, _ = letterboxed
    got = video_inputs(source)
    assert got.crop_box == (0, 0, 360, 202)
    assert torch.equal(got.frames, video_inputs(source, RAW).frames)


def test_dark_scene_is_not_cropped(media):
    path = ffmpeg_video(media / "dark.mp4", "testsrc2=size=360x640:rate=15", "lutrgb=r=val*0.12:g=val*0.12:b=val*0.12")
    assert video_inputs(path).crop_box == (0, 0, 360, 640)


def test_dark_scene_in_letterbox_is_still_found(media):
    vf = "lutrgb=r=val*0.12:g=val*0.12:b=val*0.12,pad=360:640:(ow-iw)/2:(oh-ih)/2:black"
    path = ffmpeg_video(media / "darkbox.mp4", "testsrc2=size=360x202:rate=15", vf)
    assert near(video_inputs(path).crop_box, (0, 219, 360, 421))


def test_small_bright_content_video_is_not_cropped(media):
    path = ffmpeg_video(media / "small.mp4", "color=black:size=640x360:rate=15",
                        "drawbox=x=300:y=160:w=40:h=40:color=white:t=fill")
    assert video_inputs(path).crop_box == (0, 0, 640, 360)


def test_fade_in_from_black(media):
    vf = "fade=in:st=0:d=1.5,pad=360:640:(ow-iw)/2:(oh-ih)/2:black"
    path = ffmpeg_video(media / "fade.mp4", "testsrc2=size=360x202:rate=15", vf)
    assert near(video_inputs(path).crop_box, (0, 219, 360, 421))


def test_all_black_video_is_not_cropped(media):
    path = ffmpeg_video(media / "black.mp4", "color=black:size=320x240:rate=15", "null")
    got = video_inputs(path)
    assert got.crop_box == (0, 0, 320, 240) and torch.isfinite(got.frames).all()
