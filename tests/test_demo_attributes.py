"""The demo's attribute measure against its definitions: hand-made libraries, and chance by enumeration."""

from __future__ import annotations

import itertools
from fractions import Fraction

import pytest

from mvbind.pipeline.demo.attributes import MEASURES, TrackAttributes, attribute_report, chance, counts, shared


def track(music_id: str, tempo: float, mode: str = "major", instrument: str = "piano") -> TrackAttributes:
    return TrackAttributes(music_id, tempo, mode, instrument)


# Own track m0 (100 BPM, major, piano) and seven others: what each shares with it is in its comment.
OWN = track("m0", 100.0)
LIBRARY = [
    OWN,                                   # everything, itself
    track("m1", 105.0),                    # tempo exactly +5 % (inclusive), mode, instrument: a match
    track("m2", 95.0),                     # tempo exactly −5 %, mode, instrument: a match
    track("m3", 105.1),                    # tempo just outside; mode, instrument
    track("m4", 101.0, mode="minor"),      # tempo, instrument
    track("m5", 99.0, instrument="bell"),  # tempo, mode
    track("m6", 150.0, "minor", "bell"),   # nothing
    track("m7", 100.0, "minor", "piano"),  # tempo, instrument
]


def test_shared_follows_the_definitions():
    got = {t.music_id: shared(OWN, t) for t in LIBRARY}
    assert got["m0"] == dict.fromkeys(MEASURES, True)
    assert got["m1"]["match"] and got["m2"]["match"] and not got["m1"]["own"]
    assert got["m3"] == {"match": False, "tempo": False, "mode": True, "instrument": True, "own": False}
    assert got["m4"] == {"match": False, "tempo": True, "mode": False, "instrument": True, "own": False}
    assert got["m5"] == {"match": False, "tempo": True, "mode": True, "instrument": False, "own": False}
    assert not any(got["m6"].values())
    # The tolerance is 5 % of the video's own tempo: from a 105 BPM track, 100 is within 5.25 BPM.
    assert shared(track("x", 105.0), track("y", 99.8))["tempo"] and not shared(OWN, track("y", 94.9))["tempo"]


def test_counts_of_a_top_list():
    top = [LIBRARY[i] for i in (6, 1, 0, 4, 3)]
    assert counts(OWN, top) == {"match": 2, "tempo": 3, "mode": 3, "instrument": 4, "own": 1}


def test_chance_is_the_hypergeometric_mean_counting_the_own_track():
    # k·m/N with N = 8: matches m0, m1, m2 → 3; tempo m0 m1 m2 m4 m5 m7 → 6; mode m0-m3 m5 → 5;
    # instrument all but m5, m6 → 6; own → 1.
    got = chance(OWN, LIBRARY, 5)
    assert got == pytest.approx({"match": 5 * 3 / 8, "tempo": 5 * 6 / 8, "mode": 5 * 5 / 8,
                                 "instrument": 5 * 6 / 8, "own": 5 / 8})
    # The same, independently: the mean count over every 5-subset the uniform draw could give.
    subsets = list(itertools.combinations(LIBRARY, 5))
    for measure in MEASURES:
        exact = Fraction(sum(counts(OWN, s)[measure] for s in subsets), len(subsets))
        assert got[measure] == pytest.approx(float(exact)), measure
    # k beyond the library takes every track: the counts themselves.
    assert chance(OWN, LIBRARY, 20) == pytest.approx(counts(OWN, LIBRARY))
    with pytest.raises(ValueError):
        chance(OWN, [], 5)


def test_report_means_are_over_the_videos_and_only_the_top_k_count():
    ranked = [("a.mp4", "m0", ["m1", "m6", "m0", "m3", "m4", "m2"]),  # m2 is sixth: not counted
              ("b.mp4", "m6", ["m6", "m1", "m2", "m3", "m4"])]
    report = attribute_report(ranked, LIBRARY, 5)
    assert report.videos == 2 and report.k == 5 and report.library_tracks == 8
    assert report.per_video[0]["counts"]["match"] == 2 and report.per_video[1]["counts"]["match"] == 1
    assert report.mean["match"] == pytest.approx(1.5)
    assert report.mean["own"] == pytest.approx(1.0)
    # m6 (150 BPM, minor, bell) matches only itself: chance 5/8; m0's is 15/8; mean 10/8.
    assert report.chance["match"] == pytest.approx(10 / 8)
    table = report.table()
    assert "| all attributes match (precision@5 = mean / 5) | 1.50 | 1.25 |" in table
    assert "mean over 2 held-out videos" in table and "library of 8 tracks" in table
    with pytest.raises(KeyError, match="m9"):
        attribute_report([("c.mp4", "m0", ["m9"])], LIBRARY, 5)
