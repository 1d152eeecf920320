"""pipeline.video: parity with ImageBind's reference output, formats, selective decoding, failures.

Independent anchors (ref_video.py): upstream's output for clip.mp4 (clip_expected.npz), frames
decoded by the ffmpeg command-line tool in one sequential pass, the README's closed-form frame
rule, and ImageBind's transform written the upstream way with torch (`upstream_transform`).
Float tolerances are derived in `ref_video.bilinear_tolerance` (valid on any CPU code path).
"""

from __future__ import annotations

import dataclasses
import math
import subprocess
from pathlib import Path

import av
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mvbind.errors import ConfigError, MediaError, NoStreamError
from mvbind.pipeline.config import load_config
from mvbind.pipeline.config.schema import VideoSettings
from mvbind.pipeline.encoders.imagebind.vision import _resize, clip_plan, video_inputs
from mvbind.pipeline.media.ffmpeg import ffmpeg_exe
from mvbind.pipeline.media.video import _Decoder, read_frames
from tests.media import FIXTURES, make_video
from tests.ref_video import bilinear_tolerance, ffmpeg_frames, ffmpeg_reported_fps, upstream_frame_indices

CLIP = FIXTURES / "preprocess" / "clip.mp4"
EXPECTED = FIXTURES / "preprocess" / "clip_expected.npz"
RAW = VideoSettings(remove_borders=False)
MEAN = torch.tensor(VideoSettings().mean)[:, None, None, None]
STD = torch.tensor(VideoSettings().std)[:, None, None, None]
# Against upstream's clip.mp4 output: the same decoded pixels (H.264 decoding is bit-exact, both
# convert with swscale), so only the float32 transform differs (640 px is the longest side).
REF_TOL = bilinear_tolerance(640, VideoSettings().std)


def ffmpeg(*args: str) -> None:
    """ffmpeg with a timeout, for files make_video cannot express."""
    cmd = [ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-nostdin", "-y", *args]
    subprocess.run(cmd, check=True, timeout=120)


def upstream_transform(frames: np.ndarray, frame_indices: list[tuple], size: int = 224) -> torch.Tensor:
    """ImageBind's transform written the upstream way: (C, T, H, W) float, F.interpolate, crops."""
    out = []
    for kept in frame_indices:
        clip = torch.from_numpy(np.stack([frames[i] for i in kept])).permute(3, 0, 1, 2).float() / 255.0
        h, w = clip.shape[-2:]
        new = (math.floor(h / w * size), size) if w < h else (size, math.floor(w / h * size))
        clip = (F.interpolate(clip, size=new, mode="bilinear", align_corners=False) - MEAN) / STD
        h, w = new
        for idx in range(3):
            y, x = math.ceil((h - size) / 2), math.ceil((w - size) / 2)
            if h > w:
                y = {0: 0, 1: y, 2: h - size}[idx]
            else:
                x = {0: 0, 1: x, 2: w - size}[idx]
            out.append(clip[:, :, y : y + size, x : x + size])
    return torch.stack(out)


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("video_inputs")


# --------------------------------------------------------------------------------------------
# Parity with the original code


def test_parity_with_reference():
    ref = np.load(EXPECTED)
    got = video_inputs(CLIP, RAW)
    assert got.frames.shape == (15, 3, 2, 224, 224) and got.frames.dtype == torch.float32
    diff = float(np.abs(got.frames.numpy() - ref["video"][0]).max())
    print(f"max abs diff vs reference: {diff:.3g} (bound {REF_TOL:.3g})")
    assert diff <= REF_TOL
    assert got.num_frames == int(ref["video_num_frames"]) == 135
    assert got.fps == float(ref["video_fps"])
    assert got.duration == float(ref["video_duration"])
    assert [[float(s), float(e)] for s, e in got.plan.clips] == ref["video_clips"].tolist()
    assert [list(r) for r in got.plan.frame_ranges] == ref["video_frame_ranges"].tolist()
    assert [list(i) for i in got.plan.frame_indices] == ref["video_frame_indices"].tolist()
    assert upstream_frame_indices(135, 30.0) == [tuple(i) for i in ref["video_frame_indices"].tolist()]  # ref_video
    assert got.crop_box is None and (got.width, got.height) == (360, 640)


def test_border_removal_leaves_reference_clip_alone():
    # clip.mp4 is testsrc2 edge to edge: with border removal on (the default) the content box is
    # the whole frame and the input is still upstream's, which has no border removal.
    cropped = video_inputs(CLIP)
    assert cropped.crop_box == (0, 0, 360, 640)
    assert float(np.abs(cropped.frames.numpy() - np.load(EXPECTED)["video"][0]).max()) <= REF_TOL


def test_clip_plan_edge_cases():
    ref = np.load(EXPECTED)
    plan = clip_plan(135, 30.0, VideoSettings())
    assert [list(i) for i in plan.frame_indices] == ref["video_frame_indices"].tolist()
    short = clip_plan(9, 30.0, VideoSettings())  # 0.3 s: every clip is [0, 2) -> first and last frame
    assert set(short.frame_ranges) == {(0, 9)} and set(short.frame_indices) == {(0, 8)}
    single = clip_plan(1, 25.0, VideoSettings())
    assert set(single.frame_indices) == {(0, 0)}
    four = clip_plan(135, 30.0, VideoSettings(frames_per_clip=4))
    assert four.frame_indices[0] == (0, 19, 39, 59)  # linspace(0, 59, 4).long()


def test_resize_equals_interpolate():
    rng = np.random.default_rng(0)
    for h, w in [(640, 360), (96, 128), (1080, 1920), (224, 224), (224, 300), (287, 161), (7, 5)]:
        frame = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        x = torch.from_numpy(frame).permute(2, 0, 1).float()[None] / 255.0
        new = (math.floor(h / w * 224), 224) if w < h else (224, math.floor(w / h * 224))
        want = F.interpolate(x, size=new, mode="bilinear", align_corners=False)[0]
        got = torch.from_numpy(_resize(frame, 224))
        assert got.shape == want.shape
        assert float((got - want).abs().max()) <= bilinear_tolerance(max(h, w))


def test_settings_are_plain_and_validated():
    fields = dataclasses.asdict(VideoSettings())
    assert all(isinstance(v, (int, float, bool, tuple)) for v in fields.values())
    assert hash(VideoSettings()) == hash(VideoSettings())
    for key, value in (("crops", "2"), ("size", "0"), ("clips_per_video", "0"), ("frames_per_clip", "0")):
        with pytest.raises(ConfigError, match=rf"^setting video.{key}: "):  # one line from the one validator
            load_config(overrides={f"video.{key}": value})


def test_single_crop_is_the_centre_crop():
    # Upstream's crops are top, centre, bottom (index 3·clip + crop): crops=1 gives its centre ones.
    one = video_inputs(CLIP, dataclasses.replace(RAW, crops=1)).frames
    assert one.shape == (5, 3, 2, 224, 224)
    assert float(np.abs(one.numpy() - np.load(EXPECTED)["video"][0][1::3]).max()) <= REF_TOL


# --------------------------------------------------------------------------------------------
# Sizes, durations, containers


@pytest.mark.parametrize(
    "name, kwargs, num_frames, size",
    [
        ("tiny.mp4", dict(size=(128, 96), fps=25, duration=2), 50, (128, 96)),
        ("hd.mp4", dict(size=(1920, 1080), fps=30, duration=1), 30, (1920, 1080)),
        ("landscape.mp4", dict(size=(320, 180), fps=15, duration=3), 45, (320, 180)),
        ("portrait.mp4", dict(size=(180, 320), fps=15, duration=3), 45, (180, 320)),
        ("short.mp4", dict(size=(160, 288), fps=30, duration=0.3), 9, (160, 288)),
        ("one.mp4", dict(size=(160, 288), fps=25, duration=1, extra=("-frames:v", "1")), 1, (160, 288)),
        (
            "odd.mp4",
            dict(size=(160, 288), fps=15, duration=1, extra=("-vf", "scale=161:287", "-pix_fmt", "yuv444p")),
            15,
            (161, 287),
        ),
    ],
)
def test_sizes_and_durations(media, name, kwargs, num_frames, size):
    path = make_video(media / name, audio_channels=None, **kwargs)
    got = video_inputs(path)
    assert got.frames.shape == (15, 3, 2, 224, 224)
    assert torch.isfinite(got.frames).all()
    assert got.num_frames == num_frames and (got.width, got.height) == size
    assert got.duration == pytest.approx(num_frames / got.fps)
    if num_frames / got.fps <= 2:  # every clip is [0, 2): the first and the last frame
        assert set(got.plan.frame_indices) == {(0, num_frames - 1)}
        assert all(torch.equal(got.frames[0], got.frames[3 * c]) for c in range(5))


@pytest.mark.parametrize(
    "name, kwargs",
    [
        ("vp8.webm", dict(extra=("-g", "10", "-deadline", "realtime", "-cpu-used", "8"))),
        ("vp9.webm", dict(vcodec="libvpx-vp9", extra=("-g", "10", "-deadline", "realtime", "-cpu-used", "8"))),
        ("theora.ogv", {}),
        ("mpeg4.mkv", dict(vcodec="mpeg4", acodec="aac", extra=("-bf", "2"))),
        ("msmpeg4v2.mkv", dict(vcodec="msmpeg4v2", acodec="aac")),
        ("mjpeg.mkv", dict(vcodec="mjpeg", acodec="aac")),
        ("mpeg4.avi", {}),
        ("landscape.mp4", dict(size=(288, 160))),  # crops left / centre / right
    ],
)
def test_containers_and_codecs_match_brute_force(media, name, kwargs):
    kwargs = dict(kwargs)
    extra, size = kwargs.pop("extra", ("-g", "10")), kwargs.pop("size", (160, 288))
    path = make_video(media / name, duration=3, size=size, fps=15, extra=extra, **kwargs)
    got = video_inputs(path, RAW)
    frames = ffmpeg_frames(path, size)
    assert got.num_frames == len(frames) == 45 and got.fps == 15.0  # 3 s at 15 fps
    check_upstream(got, frames)


# --------------------------------------------------------------------------------------------
# Selective decoding equals brute force (the ffmpeg CLI decoding every frame in one pass)


def check_upstream(got, frames: np.ndarray) -> None:
    """`got` keeps the frames of the README's rule and equals upstream's transform of ffmpeg's frames."""
    indices = upstream_frame_indices(len(frames), got.fps)
    assert [tuple(i) for i in got.plan.frame_indices] == indices
    assert_distinct_neighbours(frames, sorted({i for kept in indices for i in kept}))
    diff = float((got.frames - upstream_transform(frames, indices)).abs().max())
    assert diff <= bilinear_tolerance(max(frames.shape[1:3]), VideoSettings().std)


def assert_distinct_neighbours(frames: np.ndarray, wanted: list[int]) -> None:
    """The test means something only if a frame off by one would look different (testsrc2 moves)."""
    for i in wanted:
        for j in (i - 1, i + 1):
            if 0 <= j < len(frames):
                assert np.abs(frames[i].astype(np.int16) - frames[j]).mean() > 1.0, f"frames {i} and {j} look alike"


def check_selective(path: Path, size: tuple[int, int]) -> np.ndarray:
    frames = ffmpeg_frames(path, size)
    wanted = sorted({0, len(frames) - 1, *range(3, len(frames), 37), *range(5, len(frames), 23)})
    assert_distinct_neighbours(frames, wanted)
    got = read_frames(path, wanted)
    bad = [i for i in wanted if not np.array_equal(got[i], frames[i])]
    assert not bad, f"frames differ from ffmpeg's: {bad}"
    return frames


def test_vfr(media):
    path = make_video(
        media / "vfr.mp4", duration=6, size=(160, 288), fps=30, audio_channels=None,
        extra=("-vf", r"select=lt(n\,40)+not(mod(n\,4))", "-fps_mode", "vfr"),
    )  # fmt: skip
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        pts = sorted(p.pts for p in container.demux(stream) if p.pts is not None)
        rate = float(stream.average_rate)
    steps = set(np.diff(pts).tolist())
    assert len(steps) > 1, "the test file should have a variable frame rate"
    frames = check_selective(path, (160, 288))
    got = video_inputs(path, RAW)
    # select keeps frames 0-39 and every 4th of 40-179: 40 + 35; the rate is the stream's average
    assert got.num_frames == len(pts) == len(frames) == 75 and got.fps == rate
    assert abs(got.fps - ffmpeg_reported_fps(path)) <= 0.005
    check_upstream(got, frames)


def test_long_gop_with_b_frames(media):
    path = make_video(
        media / "longgop.mp4", duration=8, size=(160, 288), fps=30, audio_channels=None,
        extra=("-preset", "medium", "-g", "300", "-bf", "3"),
    )  # fmt: skip
    frames = check_selective(path, (160, 288))
    got = video_inputs(path, RAW)
    assert got.num_frames == len(frames) == 240 and got.fps == 30.0
    check_upstream(got, frames)


def test_short_gop_seeks_instead_of_decoding_everything(media, monkeypatch):
    path = make_video(
        media / "shortgop.mkv", duration=8, size=(160, 288), fps=30, acodec="aac",
        extra=("-preset", "medium", "-g", "15", "-bf", "2"),
    )  # fmt: skip
    frames = check_selective(path, (160, 288))
    decoded = []
    packets = _Decoder._packets

    def counting(self, seek_pts, targets):
        for frame in packets(self, seek_pts, targets):
            decoded.append(frame.pts)
            yield frame

    monkeypatch.setattr(_Decoder, "_packets", counting)
    got = video_inputs(path, RAW)
    assert len(decoded) < len(frames) / 3, f"decoded {len(decoded)} of {len(frames)} frames"
    assert got.num_frames == len(frames) == 240 and got.fps == 30.0
    check_upstream(got, frames)


def test_rotation_is_applied_like_ffmpeg(media):
    source = make_video(media / "unrotated.mp4", duration=1, size=(128, 96), fps=15, audio_channels=None)
    path = media / "rot90.mp4"
    ffmpeg("-display_rotation", "90", "-i", str(source), "-c", "copy", str(path))
    cmd = [ffmpeg_exe(), "-loglevel", "error", "-i", str(path), "-frames:v", "1", "-f", "rawvideo", "-pix_fmt", "rgb24"]
    raw = subprocess.run([*cmd, "-"], capture_output=True, check=True, timeout=60).stdout
    frame = read_frames(path, [0])[0]
    assert frame.shape == (128, 96, 3)
    assert np.array_equal(np.frombuffer(raw, np.uint8).reshape(frame.shape), frame)
    got = video_inputs(path)
    assert (got.width, got.height) == (96, 128)


def test_read_frames_range_check():
    with pytest.raises(ValueError):
        read_frames(CLIP, [135])


# --------------------------------------------------------------------------------------------
# Failures: a short one-line reason


def assert_short(err: pytest.ExceptionInfo) -> None:
    text = str(err.value)
    assert text and "\n" not in text and len(text) <= 200


def test_no_video_stream(media):
    path = media / "audio.m4a"
    ffmpeg("-f", "lavfi", "-i", "sine=frequency=440:duration=1", "-c:a", "aac", str(path))
    with pytest.raises(NoStreamError, match="no video stream") as err:
        video_inputs(path)
    assert_short(err)


@pytest.mark.parametrize("kind", ["zero", "text", "missing", "moov_at_end_truncated", "no_picture_data"])
def test_unusable_files(media, kind):
    path = media / f"{kind}.mp4"
    if kind == "zero":
        path.write_bytes(b"")
    elif kind == "text":
        path.write_text("this is not a video\n" * 20)
    elif kind == "moov_at_end_truncated":
        whole = make_video(media / "moov_end.mp4", duration=2, size=(160, 288), fps=15)
        data = whole.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "no_picture_data":
        whole = make_video(
            media / "faststart.mp4", duration=2, size=(160, 288), fps=15, audio_channels=None,
            extra=("-movflags", "+faststart"),
        )  # fmt: skip
        data = bytearray(whole.read_bytes())
        start = data.find(b"mdat") + 4
        data[start:] = bytes(len(data) - start)  # every coded picture zeroed
        path.write_bytes(bytes(data))
    with pytest.raises(MediaError) as err:
        video_inputs(path)
    assert not isinstance(err.value, NoStreamError)
    assert_short(err)


def test_truncated_faststart_file_gives_what_is_decodable(media):
    whole = make_video(media / "fs.mp4", duration=4, size=(160, 288), fps=15, extra=("-movflags", "+faststart"))
    data = whole.read_bytes()
    path = media / "fs_half.mp4"
    path.write_bytes(data[: len(data) // 2])
    try:
        got = video_inputs(path)
    except MediaError as err:  # acceptable too, as long as it is a short reason
        assert "\n" not in str(err)
        return
    assert got.frames.shape == (15, 3, 2, 224, 224) and torch.isfinite(got.frames).all()
    assert 0 < got.num_frames < 60


def test_resolution_change_keeps_the_first_size(media):
    parts = []
    for i, size in enumerate(["320x240", "160x120"]):
        part = media / f"part{i}.ts"
        source = f"testsrc2=size={size}:rate=25:duration=1"
        ffmpeg("-f", "lavfi", "-i", source, "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", str(part))
        parts.append(part.read_bytes())
    path = media / "switch.ts"
    path.write_bytes(b"".join(parts))  # MPEG-TS concatenates byte-wise
    got = video_inputs(path)
    assert got.num_frames == 50 and (got.width, got.height) == (320, 240)
    assert {f.shape for f in read_frames(path, [0, 49]).values()} == {(240, 320, 3)}


def test_thread_count_does_not_change_the_result():
    wanted = [0, 19, 59, 134]
    one, auto = read_frames(CLIP, wanted, threads=1), read_frames(CLIP, wanted)
    assert all(np.array_equal(one[i], auto[i]) for i in wanted)
