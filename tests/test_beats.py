"""Beat-aligned starts on generated media with known beats and cuts (real ffmpeg files, real librosa).

A click track at 120 BPM (beat k at 0.3 + 0.5·k s) and a 6 s, 20 fps video of five shots (moving test
patterns and flat colours, so both of the cut detector's comparisons are used) whose cuts sit on the
track's beats when the video's music starts at the planted offset 6.9 s. Cut and beat times are whole
frames and whole beats, so the detectors are held to a frame and a few hops. Alignment from a start
0.4 beat off (where a window grid puts it) must land on the planted offset; a steady beat cannot tell
one beat from the next, so from 0.6 beat off it lands one beat over, in phase. The last tests go
through `mvbind recommend` with a tiny random ImageBind over a library of the click track.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from mvbind.cli import cli
from mvbind.errors import ConfigError
from mvbind.pipeline.config import load_config
from mvbind.pipeline.library.beats import align_results, align_start, alignment_score, beat_times, cut_times
from tests.media import run_ffmpeg
from tests.synth import write_wav

SR = 22050
BEAT = 0.5  # 120 BPM
FIRST_BEAT = 0.3
TRACK_SECONDS = 16.0
OFFSET = 6.9  # the planted start of the video's music in the track (a beat: 0.3 + 13 · 0.5)
FPS = 20
# (source, seconds): cuts at 0.9, 1.9, 3.4, 4.9 s = track beats 7.8, 8.8, 10.3, 11.8 from the offset
SHOTS = [("testsrc2", 0.9), ("color=c=red", 1.0), ("color=c=blue", 1.5), ("smptebars", 1.5), ("testsrc", 1.1)]
CUTS = np.cumsum([s for _, s in SHOTS])[:-1]
TOL = 0.06  # s: how close the aligned start must be to the planted offset (onset lag + a frame's rounding)


def planted_beats(duration: float = TRACK_SECONDS) -> np.ndarray:
    return np.arange(FIRST_BEAT, duration - 0.25, BEAT)


def click_track(path: Path) -> Path:
    """Clicks on the planted beats: a 15 ms 1.5 kHz blip over a 60 ms low thump, on a faint noise floor."""
    rng = np.random.default_rng(0)
    x = 0.003 * rng.standard_normal(int(TRACK_SECONDS * SR))
    t = np.arange(int(0.06 * SR)) / SR
    click = 0.6 * np.sin(2 * np.pi * 1500 * t) * np.exp(-t / 0.004)
    click += 0.5 * np.sin(2 * np.pi * 80 * t) * np.exp(-t / 0.02)
    for b in planted_beats():
        i = int(round(b * SR))
        x[i:i + len(click)] += click[:len(x) - i]
    return write_wav(path, x.astype(np.float32), SR)


def cut_video(path: Path, *, letterbox: bool = False) -> Path:
    """The five shots joined with hard cuts (H.264, 20 fps), optionally letterboxed into black bars."""
    w, h = (160, 180) if letterbox else (160, 288)
    args: list[str] = []
    for source, seconds in SHOTS:
        sep = ":" if "=" in source else "="
        args += ["-f", "lavfi", "-i", f"{source}{sep}size={w}x{h}:rate={FPS}:duration={seconds}"]
    chain = "".join(f"[{i}:v]" for i in range(len(SHOTS))) + f"concat=n={len(SHOTS)}:v=1:a=0"
    if letterbox:
        chain += ",pad=160:288:0:54:black"
    run_ffmpeg(*args, "-filter_complex", chain + "[v]", "-map", "[v]", "-c:v", "libx264", "-preset", "ultrafast",
               "-pix_fmt", "yuv420p", "-r", str(FPS), str(path))
    return path


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    root = tmp_path_factory.mktemp("beats")
    music = root / "music"
    music.mkdir()
    return {"root": root, "track": click_track(music / "clicks.wav"), "video": cut_video(root / "cuts.mp4"),
            "letterboxed": cut_video(root / "letterboxed.mp4", letterbox=True)}


# -- detectors ---------------------------------------------------------------------------------
@pytest.mark.parametrize("which", ["video", "letterboxed"])
def test_cut_times_finds_every_cut_within_a_frame(media, which):
    cuts = cut_times(media[which])
    assert len(cuts) == len(CUTS), cuts
    assert np.abs(cuts - CUTS).max() <= 1 / FPS + 1e-6, cuts


def test_cut_times_finds_no_cut_in_one_moving_shot(tmp_path):
    path = tmp_path / "one.mp4"
    run_ffmpeg("-f", "lavfi", "-i", f"testsrc2=size=160x288:rate={FPS}:duration=4", "-c:v", "libx264", "-preset",
               "ultrafast", "-pix_fmt", "yuv420p", str(path))
    assert len(cut_times(path)) == 0


def test_beat_times_finds_the_click_track_beats(media):
    beats = beat_times(media["track"])
    planted = planted_beats()
    inner = planted[(planted > 1.0) & (planted < TRACK_SECONDS - 1.0)]
    nearest = np.abs(beats[None, :] - inner[:, None]).min(axis=1)
    assert nearest.max() <= 0.035, nearest  # every beat found, within three onset hops
    assert np.median(np.diff(beats)) == pytest.approx(BEAT, abs=0.02)  # at the tempo, not half or double
    # samples give the file's beats; the file's are cached until it changes
    x = np.zeros((2, int(TRACK_SECONDS * SR)), np.float32)
    from mvbind.pipeline.media.audio import decode_audio

    wave, rate = decode_audio(media["track"])
    x[:, :wave.shape[1]] = wave.numpy()[0]
    np.testing.assert_allclose(beat_times(x, sample_rate=rate), beats, atol=1e-9)
    assert beat_times(media["track"]) is beats and not beats.flags.writeable


def test_beat_cache_notices_a_replaced_file(tmp_path):
    path = click_track(tmp_path / "t.wav")
    first = beat_times(path)
    write_wav(path, np.zeros(SR * 4, np.float32), SR)  # silence now: no beats
    os.utime(path, ns=(1, 1))
    assert len(first) > 20 and len(beat_times(path)) == 0


# -- alignment ---------------------------------------------------------------------------------
def test_aligned_start_lands_on_the_planted_offset(media):
    beats, cuts = beat_times(media["track"]), cut_times(media["video"])
    for off in (0.4, -0.4):  # a window start 0.4 beat either side of the truth
        window = OFFSET + off * BEAT
        aligned, score = align_start(beats, cuts, window, search=2.0, tolerance=0.1)
        assert abs(aligned - OFFSET) <= TOL and score == 1.0, (off, aligned, score)
        assert abs(window - OFFSET) > TOL and alignment_score(beats, cuts, window, 0.1) == 0.0
    # from 0.6 beat off the nearest start in phase is the next beat: cuts on beats, one beat over
    aligned, score = align_start(beats, cuts, OFFSET + 0.6 * BEAT, search=2.0, tolerance=0.1)
    assert abs(aligned - (OFFSET + BEAT)) <= TOL and score == 1.0


def test_align_start_without_cuts_or_beats_keeps_the_window_start():
    assert align_start([], [1.0, 2.0], 3.3) == (3.3, None)
    assert align_start(planted_beats(), [], 3.3) == (3.3, None)


def test_align_start_stays_in_the_search_range_and_the_track():
    beats = planted_beats()
    cuts = [1.0, 2.0]  # on beats from any start that is a beat minus a whole second: 0.3, 0.8, 1.3, ...
    aligned, score = align_start(beats, cuts, 0.0, search=2.0, tolerance=0.05)
    assert aligned == pytest.approx(0.3) and score == 1.0  # never before the track's start
    aligned, score = align_start(beats, cuts, 5.0, search=0.1, tolerance=0.05)  # in phase: 4.8 and 5.3, too far
    assert aligned == 5.0 and score == 0.0
    aligned, _ = align_start(beats, cuts, 14.0, search=2.0, tolerance=0.05, max_start=13.9)
    assert aligned <= 13.9


def test_align_results_adds_the_aligned_start_and_notes_what_it_could_not_align(media, tmp_path):
    results = [{"track": str(media["track"]), "start": OFFSET + 0.4 * BEAT, "track_duration": TRACK_SECONDS},
               {"track": str(tmp_path / "gone.mp3"), "start": 2.0, "track_duration": 10.0}]
    notes = align_results(results, media["video"], search=2.0, tolerance=0.1)
    assert results[0]["start"] == OFFSET + 0.4 * BEAT  # the window start is kept
    assert abs(results[0]["aligned_start"] - OFFSET) <= TOL and results[0]["alignment"] == 1.0
    assert results[1]["aligned_start"] == 2.0 and results[1]["alignment"] is None
    assert notes == ["gone.mp3: no beat alignment (audio not readable: file not found (no such file at that path))"]
    missing = [{"track": str(media["track"]), "start": 1.0}]
    notes = align_results(missing, tmp_path / "deleted.mp4")
    assert missing[0]["aligned_start"] == 1.0 and missing[0]["alignment"] is None
    assert len(notes) == 1 and notes[0].startswith("deleted.mp4: no beat alignment") and "\n" not in notes[0]


@pytest.mark.parametrize("dotted,value", [("recommend.beat_tolerance", "0"), ("recommend.beat_search", "-1"),
                                          ("recommend.beat_align", "maybe")])
def test_beat_settings_are_checked_in_one_line(dotted, value):
    with pytest.raises(ConfigError, match=rf"{re.escape(dotted.split('.')[1])}") as err:
        load_config(overrides={dotted: value})
    assert "\n" not in str(err.value)


# -- through `mvbind recommend` ----------------------------------------------------------------
@pytest.fixture(scope="module")
def library(media):
    root = media["root"]
    opts = ["--arch", "tiny", "--weights", "random", "--workers", "0", "--quiet",
            "--set", f"paths.cache={root / 'cache'}", "--set", f"paths.runs={root / 'runs'}",
            "--set", f"library.dir={root / 'libs'}"]
    result = CliRunner().invoke(cli, ["index", str(media["track"].parent), "--name", "clicks", *opts])
    assert result.exit_code == 0, result.output
    return opts


def test_recommend_reports_a_start_in_phase_with_the_planted_offset(media, library):
    result = CliRunner().invoke(cli, ["recommend", str(media["video"]), "--library", "clicks", "--json", *library])
    assert result.exit_code == 0, result.output
    top = json.loads(result.stdout)["videos"][0]["results"][0]
    assert top["start"] == int(top["start"])  # a window start (hop 1 s), left as it was
    phase = (top["aligned_start"] - OFFSET) / BEAT
    assert abs(phase - round(phase)) * BEAT <= TOL and top["alignment"] == 1.0, top
    assert abs(top["aligned_start"] - top["start"]) <= BEAT / 2 + TOL  # moved as little as it could
    table = CliRunner().invoke(cli, ["recommend", str(media["video"]), "--library", "clicks", *library])
    assert table.exit_code == 0 and "beat start" in table.stdout and "(1.00)" in table.stdout, table.output


def test_recommend_with_beat_align_off_has_no_aligned_start(media, library):
    args = ["recommend", str(media["video"]), "--library", "clicks", "--set", "recommend.beat_align=false", *library]
    result = CliRunner().invoke(cli, [*args, "--json"])
    assert result.exit_code == 0, result.output
    top = json.loads(result.stdout)["videos"][0]["results"][0]
    assert "aligned_start" not in top and "alignment" not in top
    assert "beat start" not in CliRunner().invoke(cli, args).stdout
