"""demo-data: a seeded synthetic collection — determinism, layout, and the music↔visual coupling."""

import hashlib
import json
import math
import os
from collections import Counter
from pathlib import Path

import av
import numpy as np
import pytest
from click.testing import CliRunner

from mvbind.cli import demo_data_command
from mvbind.errors import ConfigError
from mvbind.pipeline.demo import generate as demo
from mvbind.pipeline.media.borders import detect_content_box
from mvbind.pipeline.media.inputs import list_inputs
from mvbind.stages.demo_data import demo_data

TINY = dict(videos=6, library_tracks=2, video_seconds=(2.0, 3.0), track_seconds=(6.0, 8.0), progress=False)
SR, FPS = demo.SAMPLE_RATE, demo.FPS


def file_hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def decode_audio(path) -> np.ndarray:
    with av.open(str(path)) as c:
        return np.concatenate([f.to_ndarray().reshape(-1) for f in c.decode(audio=0)]).astype(np.float64)


def decode_frames(path) -> list[np.ndarray]:
    with av.open(str(path)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]


@pytest.fixture(scope="module")
def collection(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo") / "a"
    summary = demo_data(root, seed=0, workers=0, **TINY)
    return root, summary, json.loads((root / "demo.json").read_text())


def test_same_seed_gives_identical_files_whatever_the_workers(collection, tmp_path):
    # Another worker count *and* another CPU set: libx264 picks its thread count from the CPUs the
    # process may use unless told otherwise, and its bytes depend on it (the spawned workers and
    # the ffmpeg processes inherit this affinity).
    root, _, _ = collection
    cpus = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(cpus)})
    try:
        demo_data(tmp_path / "b", seed=0, workers=2, **TINY)
    finally:
        os.sched_setaffinity(0, cpus)
    first, again = file_hashes(root), file_hashes(tmp_path / "b")
    assert first == again
    assert sum(name.endswith((".mp4", ".mp3")) for name in first) == 6 + 5 + 2

    other = demo_data(tmp_path / "c", seed=1, workers=0, **{**TINY, "videos": 2, "library_tracks": 1})
    assert other.videos == 2
    changed = file_hashes(tmp_path / "c")
    media = [n for n in changed if n.endswith((".mp4", ".mp3"))]
    assert media and all(changed[n] != first.get(n) for n in media)


def test_layout_manifests_and_ground_truth(collection):
    root, summary, record = collection
    items = list_inputs(root / "videos" / "manifest.csv")
    assert len(items) == 6 and all(Path(i.path).is_file() for i in items)
    assert len({i.id for i in items}) == 6 and all(i.split == "" for i in items)
    uses = Counter(i.music_id for i in items)
    assert max(uses.values()) > 1, "some track must be reused by several videos"

    library = list_inputs(root / "library" / "manifest.csv")
    by_id = {i.music_id: i for i in library}
    assert len(library) == summary.library == len(uses) + 2
    assert set(uses) <= set(by_id) and all(Path(i.path).is_file() for i in library)
    assert record["seed"] == 0 and record["counts"]["videos"] == 6
    assert sum(t["distractor"] for t in record["tracks"]) == 2
    assert not {t["music_id"] for t in record["tracks"] if t["distractor"]} & set(uses)

    tracks = {t["music_id"]: t for t in record["tracks"]}
    for v in record["videos"]:
        track = tracks[v["music_id"]]
        assert 0 <= v["offset"] and v["offset"] + v["duration"] <= track["duration"]
        assert track["duration"] > v["duration"]
    # tags in the library files, and the library is longer than the videos
    track = record["tracks"][0]
    with av.open(str(root / track["path"])) as c:
        assert c.metadata.get("title") == track["title"] and c.metadata.get("artist") == track["artist"]
        assert c.duration / 1e6 == pytest.approx(track["duration"], abs=0.1)


def test_videos_are_vertical_with_audio_and_some_have_borders(collection):
    root, summary, record = collection
    borders = Counter(v["border"] for v in record["videos"])
    assert borders["letterbox"] >= 1 and borders["pillarbox"] >= 1
    assert (summary.letterboxed, summary.pillarboxed) == (borders["letterbox"], borders["pillarbox"])
    for v in record["videos"]:
        path = root / v["path"]
        with av.open(str(path)) as c:
            vs, (aus,) = c.streams.video[0], c.streams.audio
            assert (vs.width, vs.height) == (v["width"], v["height"]) and vs.height > vs.width
            assert vs.codec_context.name == "h264" and aus.codec_context.name == "aac"
            assert aus.sample_rate == SR
        frames = decode_frames(path)
        assert len(frames) == round(v["duration"] * FPS)
        assert decode_audio(path).size / SR == pytest.approx(v["duration"], abs=0.1)
        box = detect_content_box(frames[::4])
        assert all(abs(a - b) <= 2 for a, b in zip(box, v["box"])), (v["id"], v["border"], box, v["box"])
        if v["border"] == "none":
            assert tuple(v["box"]) == (0, 0, v["width"], v["height"])


def test_video_music_is_the_track_segment_at_the_recorded_offset(collection):
    root, _, record = collection
    tracks = {t["music_id"]: t for t in record["tracks"]}
    for v in record["videos"]:
        x = decode_audio(root / tracks[v["music_id"]]["path"])  # mp3 of the whole track
        y = decode_audio(root / v["path"])  # AAC in the video
        n = 1 << int(np.ceil(np.log2(x.size + y.size)))
        xc = np.fft.irfft(np.fft.rfft(x, n) * np.conj(np.fft.rfft(y, n)), n)[: x.size]
        assert int(np.argmax(xc)) / SR == pytest.approx(v["offset"], abs=0.01), v["id"]


def beat_period(x: np.ndarray, hop: int = 256, n: int = 1024) -> float:
    """The strongest period between 0.3 and 1 s of the onset envelope (spectral flux), seconds."""
    frames = np.lib.stride_tricks.sliding_window_view(x, n)[::hop] * np.hanning(n)
    flux = np.maximum(np.diff(np.abs(np.fft.rfft(frames, axis=1)), axis=0), 0).sum(1)
    flux -= flux.mean()
    ac = np.correlate(flux, flux, "full")[flux.size - 1:]
    fps = SR / hop
    lo, hi = int(0.3 * fps), int(1.0 * fps)
    lag = lo + int(np.argmax(ac[lo:hi + 1]))
    y0, y1, y2 = ac[lag - 1: lag + 2]
    return (lag + 0.5 * (y0 - y2) / (y0 - 2 * y1 + y2)) / fps


def test_music_tempo_setting_is_the_beat_period_in_the_audio(collection):
    root, _, record = collection
    for track in record["tracks"]:
        measured = beat_period(decode_audio(root / track["path"]))
        ratio = measured / (60.0 / track["tempo"])
        # the onset autocorrelation peaks at the beat or one metrical octave away (half/double time)
        assert min(abs(ratio / m - 1) for m in (0.5, 1.0, 2.0)) < 0.03, (track["music_id"], track["tempo"], ratio)

    # any window of a track renders exactly as the same slice of the whole track
    spec = demo.make_track_spec(5, 0, 7.0)
    whole = demo.synth_track(spec)
    assert np.array_equal(demo.synth_track(spec, 30001, 20000), whole[30001:50001])
    assert np.array_equal(demo.to_pcm16(demo.synth_track(spec)), demo.to_pcm16(whole))


def test_cuts_in_the_rendered_videos_fall_on_beats(collection):
    root, _, record = collection
    tracks = {t["music_id"]: t for t in record["tracks"]}
    found = expected = 0
    for v in record["videos"]:
        p = 60.0 / tracks[v["music_id"]]["tempo"]
        first, last = math.ceil(v["offset"] / p), math.floor((v["offset"] + v["duration"]) / p)
        beat_frames = {math.ceil((k * p - v["offset"]) * FPS - 1e-6) for k in range(first, last + 1)}
        assert set(v["cut_frames"]) <= beat_frames
        x0, y0, x1, y1 = v["box"]
        frames = np.stack([f[y0:y1, x0:x1] for f in decode_frames(root / v["path"])]).astype(np.int16)
        change = np.concatenate([[0.0], np.abs(np.diff(frames, axis=0)).mean((1, 2, 3))])
        big = {i for i in range(1, len(change)) if change[i] > max(8.0, 3 * np.median(change[1:]))}
        assert big <= beat_frames, (v["id"], sorted(big - beat_frames))  # the picture jumps only on beats
        found += len(big & set(v["cut_frames"]))
        expected += len(v["cut_frames"])
    assert expected >= 3 and found >= 0.8 * expected


def test_visual_style_follows_the_music_not_the_nuisance():
    plan = demo.plan_collection(3, 80, 0)
    rows = []
    for v in plan.videos:
        track = plan.tracks_by_id[v.music_id]
        style = demo.visual_style(track, v)
        x0, y0, x1, y1 = v.box
        frame = next(iter(demo.render_frames(track, v, style)))[y0:y1, x0:x1].astype(float)
        rows.append((style.energy, track.mode == "major", frame.mean(), style.beats_per_cut * track.beat,
                     style.hue, style.saturation))
    energy, major, brightness, shot, hue, sat = (np.array(c, dtype=float) for c in zip(*rows))
    assert np.corrcoef(energy, shot)[0, 1] < -0.5  # more energetic music, shorter shots
    assert np.corrcoef(energy, sat)[0, 1] > 0.9
    assert brightness[major == 1].mean() > brightness[major == 0].mean() + 10
    warm = (hue < 80) | (hue > 330)
    assert np.array_equal(warm, major == 1)  # major → warm palette, minor → cool


def test_refuses_to_overwrite_unless_asked(tmp_path):
    small = dict(videos=1, library_tracks=0, video_seconds=(1.0, 1.0), track_seconds=(3.0, 3.0),
                 workers=0, progress=False)
    stranger = tmp_path / "stranger"
    stranger.mkdir()
    (stranger / "keep.txt").write_text("mine")
    with pytest.raises(ConfigError, match="--overwrite"):
        demo_data(stranger, **small)
    with pytest.raises(ConfigError, match="not a demo collection"):
        demo_data(stranger, overwrite=True, **small)
    assert (stranger / "keep.txt").read_text() == "mine"

    out = tmp_path / "demo"
    runner = CliRunner()
    result = runner.invoke(demo_data_command, [str(out), "--videos", "1", "--library-tracks", "0",
                                               "--workers", "0"])
    assert result.exit_code == 0, result.output
    assert "videos 1" in result.output and "library 1 tracks" in result.output
    result = runner.invoke(demo_data_command, [str(out), "--videos", "1"])
    assert result.exit_code == 2 and "--overwrite" in result.output
    (out / "videos" / "stale.mp4").write_bytes(b"old")
    summary = demo_data(out, overwrite=True, **small)
    assert summary.videos == 1 and not (out / "videos" / "stale.mp4").exists()
    assert len(list_inputs(out / "videos" / "manifest.csv")) == 1
