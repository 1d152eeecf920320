"""The `signal` encoder on real ffmpeg-made media: shapes, determinism, features that move the
right way (tempo, cuts, brightness, motion), awkward files, and stage one end to end."""

import pickle
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from mvbind.cache import FeatureCache
from mvbind.errors import ConfigError
from mvbind.pipeline.config import load_config
from mvbind.pipeline.encoders.base import extractor_settings, make_preparer
from mvbind.pipeline.encoders.signal.features import (
    AUDIO_FEATURE_NAMES,
    VIDEO_FEATURE_NAMES,
    SignalSettings,
    audio_feature_names,
    audio_features,
    clip_samples,
    video_feature_names,
    video_features,
)
from mvbind.pipeline.media.ffmpeg import ffmpeg_exe
from mvbind.stages.extract import extract
from tests.media import make_video, run_ffmpeg

DA, DV = len(AUDIO_FEATURE_NAMES), len(VIDEO_FEATURE_NAMES)


def signal_config(cache_dir=None, **overrides):
    base = {"encoder.name": "signal", "extract.workers": 0}
    if cache_dir is not None:
        base["paths.cache"] = str(cache_dir)
    base.update(overrides)
    return load_config(overrides=base)


def av_file(path: Path, video: str, audio: str | None, duration: float, extra: tuple[str, ...] = ()) -> Path:
    """Mux a lavfi video source and (optionally) a lavfi audio source into an H.264/AAC mp4."""
    args = ["-f", "lavfi", "-i", video]
    if audio:
        args += ["-f", "lavfi", "-i", audio]
    args += ["-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p"]
    if audio:
        args += ["-c:a", "aac"]
    run_ffmpeg(*args, *extra, "-t", str(duration), str(path))
    return path


def click_track(bpm: float, duration: float) -> str:
    period = 60.0 / bpm
    expr = f"0.8*sin(2*PI*1500*t)*lt(mod(t\\,{period:.6f})\\,0.015)"
    return f"aevalsrc='{expr}':s=44100:d={duration}"


def frames_file(path: Path, frames: np.ndarray, fps: int) -> Path:
    """Encode uint8 (n, h, w, 3) RGB frames piped to ffmpeg as rawvideo (no shell)."""
    n, h, w, _ = frames.shape
    cmd = [ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y", "-f", "rawvideo", "-pix_fmt", "rgb24",
           "-s", f"{w}x{h}", "-r", str(fps), "-i", "-", "-c:v", "libx264", "-preset", "ultrafast",
           "-pix_fmt", "yuv420p", str(path)]
    subprocess.run(cmd, input=np.ascontiguousarray(frames).tobytes(), check=True)
    return path


PALETTE = np.array([[220, 30, 30], [30, 40, 220], [30, 200, 40], [230, 220, 40]], np.uint8)


def cuts_video(path: Path, shot_seconds: float, duration: float = 4.0, fps: int = 24) -> Path:
    n = int(duration * fps)
    shot = np.arange(n) // max(1, int(round(shot_seconds * fps)))
    frames = np.broadcast_to(PALETTE[shot % len(PALETTE)][:, None, None, :], (n, 72, 128, 3))
    return frames_file(path, frames, fps)


def moving_video(path: Path, pixels_per_frame: int, duration: float = 2.0, fps: int = 24) -> Path:
    rng = np.random.default_rng(0)
    texture = rng.integers(0, 256, (18, 64), dtype=np.uint8).repeat(4, 0).repeat(4, 1)  # 72 x 256 blocks
    texture = np.stack([texture, texture[::-1], 255 - texture], axis=-1)
    n = int(duration * fps)
    frames = np.stack([np.roll(texture, i * pixels_per_frame, axis=1)[:, :128] for i in range(n)])
    return frames_file(path, frames, fps)


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    d = tmp_path_factory.mktemp("signal_media")
    files = {
        "slow": av_file(d / "bpm90.mp4", "color=c=0x406080:size=128x72:rate=10", click_track(90, 6.0), 6.0),
        "fast": av_file(d / "bpm150.mp4", "color=c=0x406080:size=128x72:rate=10", click_track(150, 6.0), 6.0),
        "dark": av_file(d / "dark.mp4", "color=c=0x303030:size=128x72:rate=12", None, 2.0),
        "bright": av_file(d / "bright.mp4", "color=c=0xd0d0d0:size=128x72:rate=12", None, 2.0),
        "many_cuts": cuts_video(d / "cuts_fast.mp4", 0.25),
        "few_cuts": cuts_video(d / "cuts_slow.mp4", 2.0),
        "still": moving_video(d / "still.mp4", 0),
        "moving": moving_video(d / "moving.mp4", 3),
        "testsrc": make_video(d / "testsrc.mp4", duration=3.0, size=(160, 288), fps=15),
        "wide": make_video(d / "wide.mp4", duration=2.0, size=(160, 90), fps=12, audio_channels=None),
        "boxed": make_video(d / "boxed.mp4", duration=2.0, size=(160, 90), pad=(160, 288), fps=12,
                            audio_channels=None),
        "silent": make_video(d / "silent.webm", duration=2.0, size=(96, 128), audio_channels=None),
        "short": make_video(d / "short.mp4", duration=0.3, size=(128, 96), fps=25),
        "surround": make_video(d / "surround.mp4", duration=2.5, size=(128, 96), audio_channels=6,
                               sample_rate=48000),
        "hd": make_video(d / "hd.mp4", duration=1.0, size=(1920, 1080), fps=30, audio_channels=2,
                         sample_rate=44100),
        "vfr": make_video(d / "vfr.mp4", duration=4.0, size=(160, 96), fps=30,
                          extra=("-vf", "select='lt(n\\,20)+not(mod(n\\,7))'", "-fps_mode", "vfr")),
    }
    return files


@pytest.fixture(scope="module")
def prepare():
    preparer = make_preparer(signal_config())
    preparer.warm_up()  # imports librosa and compiles its kernels (seconds, once per process)
    return preparer


def test_feature_names_document_every_dimension():
    assert len(set(AUDIO_FEATURE_NAMES)) == DA and len(set(VIDEO_FEATURE_NAMES)) == DV
    assert {"tempo_log2_over_120bpm", "beat_strength_log1p", "onset_rate_log1p_per_s", "rms_db_mean",
            "rms_db_std", "centroid_log2_over_1khz", "contrast_0", "mfcc_mean_00", "mfcc_std_12",
            "chroma_A"} <= set(AUDIO_FEATURE_NAMES)
    assert {"brightness", "saturation", "hue_00", "motion_mean_log1p",
            "cut_rate_log1p_per_s"} <= set(VIDEO_FEATURE_NAMES)
    wider = SignalSettings(n_mfcc=20, hue_bins=12)
    assert len(audio_feature_names(wider)) == DA + 14 and len(video_feature_names(wider)) == DV + 4


def test_settings_shapes_and_fingerprint_inputs(tmp_path):
    config = signal_config(tmp_path)
    settings = extractor_settings(config)
    assert settings["encoder"]["name"] == "signal" and settings["shapes"] == {"audio": [3, DA], "video": [5, DV]}
    assert settings["signal"]["sample_rate"] == 22050 and settings["audio"]["features"] == AUDIO_FEATURE_NAMES
    other = extractor_settings(signal_config(tmp_path, **{"signal.hue_bins": 12, "video.clips_per_video": 4}))
    assert other["shapes"]["video"] == [4, DV + 4] and other["signal"] != settings["signal"]
    with pytest.raises(ConfigError, match="setting signal.cut_threshold"):
        extractor_settings(signal_config(tmp_path, **{"signal.cut_threshold": 2.0}))


def test_shapes_determinism_and_pickling(media, prepare):
    item = prepare(str(media["testsrc"]))
    assert item.get("audio").shape == (3, DA) and item.get("video").shape == (5, DV)
    assert item.get("audio").dtype == item.get("video").dtype == torch.float32
    assert np.isfinite(item.get("audio").numpy()).all() and np.isfinite(item.get("video").numpy()).all()
    assert item.duration == pytest.approx(3.0, abs=0.1) and not item.missing
    again = pickle.loads(pickle.dumps(prepare))(str(media["testsrc"]))  # as in a worker process
    assert np.array_equal(item.get("audio").numpy(), again.get("audio").numpy())
    assert np.array_equal(item.get("video").numpy(), again.get("video").numpy())
    # standardised: values stay within a few units (float16 cache storage keeps them)
    assert np.abs(item.get("audio").numpy()).max() < 20 and np.abs(item.get("video").numpy()).max() < 20


def test_faster_click_track_has_higher_tempo(media):
    col = AUDIO_FEATURE_NAMES.index("tempo_log2_over_120bpm")
    known = AUDIO_FEATURE_NAMES.index("tempo_known")
    onset = AUDIO_FEATURE_NAMES.index("onset_rate_log1p_per_s")
    slow, fast = (audio_features(media[k], clip_duration=2.0, clips_per_video=3).features
                  for k in ("slow", "fast"))
    assert (slow[:, known] == 1).all() and (fast[:, known] == 1).all()
    assert (fast[:, col] > slow[:, col]).all()
    bpm = lambda f: 120.0 * 2.0 ** f[:, col]  # noqa: E731
    np.testing.assert_allclose(bpm(slow), 90, rtol=0.08)
    np.testing.assert_allclose(bpm(fast), 150, rtol=0.08)
    assert fast[:, onset].mean() > slow[:, onset].mean()


def test_more_cuts_give_a_higher_cut_rate(media):
    col = VIDEO_FEATURE_NAMES.index("cut_rate_log1p_per_s")
    many = video_features(media["many_cuts"], clip_duration=2.0, clips_per_video=2).features[:, col]
    few = video_features(media["few_cuts"], clip_duration=2.0, clips_per_video=2).features[:, col]
    assert (many > few).all()
    assert np.expm1(many).min() > 3.0 and np.expm1(few).max() < 1.0  # ~4 cuts/s vs at most one per clip


def test_brightness_and_motion_move_the_right_way(media):
    b = VIDEO_FEATURE_NAMES.index("brightness")
    dark, bright = (video_features(media[k]).features for k in ("dark", "bright"))
    assert (bright[:, b] > dark[:, b] + 1.0).all()
    m = VIDEO_FEATURE_NAMES.index("motion_mean_log1p")
    still, moving = (video_features(media[k]).features for k in ("still", "moving"))
    assert (moving[:, m] > still[:, m] + 0.5).all()
    cut = VIDEO_FEATURE_NAMES.index("cut_rate_log1p_per_s")
    assert (moving[:, cut] == still[:, cut]).all()  # motion is not a cut


def test_letterbox_bars_are_cropped(media):
    names = ["brightness", "contrast", "saturation", "colourful_fraction"]
    cols = [VIDEO_FEATURE_NAMES.index(n) for n in names]
    wide = video_features(media["wide"]).features[:, cols]
    boxed = video_features(media["boxed"]).features[:, cols]
    np.testing.assert_allclose(boxed, wide, atol=0.15)
    kept = video_features(media["boxed"], SignalSettings(remove_borders=False)).features[:, cols]
    assert (kept[:, 0] < wide[:, 0] - 0.5).all()  # the black bars would darken it


def test_awkward_files(media, prepare):
    silent = prepare(str(media["silent"]))
    assert silent.get("audio") is None and silent.reason("audio") == "no audio stream"
    assert silent.get("video").shape == (5, DV)
    for key in ("short", "surround", "hd", "vfr"):
        item = prepare(str(media[key]))
        assert item.get("audio") is not None and item.get("video") is not None, (key, item.missing)
        assert item.get("audio").shape == (3, DA) and item.get("video").shape == (5, DV), key
        assert np.isfinite(item.get("audio").numpy()).all() and np.isfinite(item.get("video").numpy()).all(), key
    assert prepare(str(media["short"])).duration == pytest.approx(0.3, abs=0.05)
    known = AUDIO_FEATURE_NAMES.index("tempo_known")
    assert (prepare(str(media["short"])).get("audio")[:, known] == 0).all()  # too short for a tempo
    garbage = media["silent"].parent / "garbage.mp4"
    garbage.write_bytes(b"not a video at all" * 100)
    broken = prepare(str(garbage))
    assert broken.get("audio") is None and broken.get("video") is None
    assert broken.reason("video").startswith("cannot open")


def test_sampling_follows_the_clip_frames():
    assert clip_samples(0.0, 2.0, 30.0, 300, 8.0) == [0, 3, 7, 11, 15, 18, 22, 26, 30, 33, 37, 41, 45, 48, 52,
                                                      56, 59]  # 8 per second plus the clip's last frame
    assert clip_samples(0.0, 2.0, 5.0, 10, 8.0) == list(range(10))  # low fps: every frame
    assert clip_samples(0.0, 2.0, 25.0, 7, 8.0) == [0, 3, 6]  # clip longer than the video


def test_extract_end_to_end(media, tmp_path):
    folder = tmp_path / "videos"
    folder.mkdir()
    for key in ("testsrc", "silent", "vfr", "short"):
        (folder / media[key].name).symlink_to(media[key])
    config = signal_config(tmp_path / "cache")
    summary = extract(config, folder, progress=False)
    assert (summary.extracted, len(summary.failed), summary.without_audio) == (4, 0, 1)
    settings = extractor_settings(config)
    ns = FeatureCache(tmp_path / "cache").get(settings)
    feats = ns.load()
    assert feats.audio.shape == (4, *settings["shapes"]["audio"])
    assert feats.video.shape == (4, *settings["shapes"]["video"])
    assert feats.video_mask.all() and feats.audio_mask.sum() == 3
    direct = make_preparer(config)(str(media["testsrc"]))
    row = [Path(p).name for p in feats.paths].index("testsrc.mp4")
    np.testing.assert_allclose(feats.video[row].astype(np.float32), direct.get("video").numpy(), rtol=1e-3, atol=1e-2)
    again = extract(config, folder, progress=False)
    assert (again.extracted, again.reused) == (0, 4)
