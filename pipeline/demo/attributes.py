"""The demo's honest measure: do a video's recommended tracks share its own track's attributes?

A demo video's visuals are rendered from a few of its track's latent factors only (tempo → cut rate
and motion, mode → warm or cool hues, instrument → the hue band, energy → saturation, brightness,
pulse; `pipeline.demo.generate.visual_style`). Many library tracks share those factors, and nothing in
the picture tells them apart, so "is the video's own track in the top 5?" asks for more than the video
holds. The question it can answer: how many of the top k share the attributes the visuals show.

Definitions (the video's *own track* is the track its music was cut from, by music_id in demo.json):

- tempo: |tempo(candidate) − tempo(own)| ≤ 5 % of tempo(own) (inclusive; from the video's side);
- mode: the same mode (major/minor); instrument: the same instrument;
- match: tempo AND mode AND instrument; its mean count over the top k, divided by k, is precision@k;
- own: the candidate is the video's own track (the old question, kept for continuity).

Energy is not compared: a video shows the local energy of its segment (sections scale the track's
energy up and down), not the track's own value, so "the same energy" has no crisp definition.

Chance is what k tracks drawn uniformly from the library without replacement would score: the
hypergeometric mean k·m/N per video, m being the library's tracks that share the attribute with the
video's own track, the own track included (it shares every attribute with itself) — the same library
the recommender searches. Computed exactly per video, then averaged like the observed counts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

TEMPO_TOLERANCE = 0.05  # relative to the video's own track's tempo
MEASURES = ("match", "tempo", "mode", "instrument", "own")
LABELS = {
    "match": "all attributes match (precision@{k} = mean / {k})",
    "tempo": "tempo within ±5 %",
    "mode": "same mode",
    "instrument": "same instrument",
    "own": "its own track in the top {k}",
}


@dataclass(frozen=True)
class TrackAttributes:
    """The attributes of one library track that a demo video's visuals can show."""

    music_id: str
    tempo: float  # BPM
    mode: str
    instrument: str

    @classmethod
    def from_record(cls, record: dict) -> TrackAttributes:
        """From one entry of demo.json's "tracks"."""
        return cls(str(record["music_id"]), float(record["tempo"]), str(record["mode"]), str(record["instrument"]))


def shared(own: TrackAttributes, other: TrackAttributes) -> dict[str, bool]:
    """Which measures `other` satisfies for a video whose own track is `own` (see the module docstring)."""
    # 1e-9: tempos are written with one decimal, so a difference of exactly 5 % must not fail on float rounding
    tempo = abs(other.tempo - own.tempo) <= TEMPO_TOLERANCE * own.tempo + 1e-9
    mode = other.mode == own.mode
    instrument = other.instrument == own.instrument
    return {"match": tempo and mode and instrument, "tempo": tempo, "mode": mode, "instrument": instrument,
            "own": other.music_id == own.music_id}


def counts(own: TrackAttributes, tracks: Sequence[TrackAttributes]) -> dict[str, int]:
    """How many of `tracks` satisfy each measure for a video whose own track is `own`."""
    out = dict.fromkeys(MEASURES, 0)
    for track in tracks:
        for measure, ok in shared(own, track).items():
            out[measure] += int(ok)
    return out


def chance(own: TrackAttributes, library: Sequence[TrackAttributes], k: int) -> dict[str, float]:
    """Expected counts among k tracks drawn uniformly from `library` without replacement: k·m/N per measure
    (the hypergeometric mean; k is clamped to the library's size, as the recommender clamps it)."""
    if not library:
        raise ValueError("an empty library has no chance level")
    k = min(k, len(library))
    return {measure: k * m / len(library) for measure, m in counts(own, library).items()}


@dataclass
class AttributeReport:
    """Per-video counts over the top k and their means over the videos, beside chance."""

    k: int
    library_tracks: int
    per_video: list[dict] = field(default_factory=list)  # video, music_id, top (music ids), counts, chance

    @property
    def videos(self) -> int:
        return len(self.per_video)

    def _mean(self, part: str) -> dict[str, float]:
        n = max(1, self.videos)
        return {m: sum(v[part][m] for v in self.per_video) / n for m in MEASURES}

    @property
    def mean(self) -> dict[str, float]:
        """Mean count per video over its top k, per measure."""
        return self._mean("counts")

    @property
    def chance(self) -> dict[str, float]:
        """Mean chance count per video, per measure."""
        return self._mean("chance")

    def table(self) -> str:
        """A Markdown table of the means beside chance, with one line saying what they count."""
        k = self.k
        mean, base = self.mean, self.chance
        lines = [f"| measure | top-{k} mean | chance |", "|---|---:|---:|"]
        for m in MEASURES:
            lines.append(f"| {LABELS[m].format(k=k)} | {mean[m]:.2f} | {base[m]:.2f} |")
        lines.append("")
        lines.append(f"Counts of the top {k} per video (of {k}), mean over {self.videos} held-out videos; "
                     f"library of {self.library_tracks} tracks; chance: {k} tracks drawn uniformly from the library.")
        return "\n".join(lines) + "\n"

    def to_json(self) -> dict:
        return {"k": self.k, "videos": self.videos, "library_tracks": self.library_tracks,
                "tempo_tolerance": TEMPO_TOLERANCE, "mean": self.mean, "chance": self.chance,
                "per_video": self.per_video}


def attribute_report(ranked: Sequence[tuple[str, str, Sequence[str]]], tracks: Sequence[TrackAttributes],
                     k: int) -> AttributeReport:
    """Score each (video, own music_id, top music_ids best first) against `tracks`, the whole library.

    Only the first k of each top list count; an unknown music_id is an error, not a silent miss."""
    by_id = {t.music_id: t for t in tracks}
    report = AttributeReport(k=min(k, len(tracks)), library_tracks=len(tracks))
    for video, music_id, top in ranked:
        unknown = [m for m in (music_id, *top) if m not in by_id]
        if unknown:
            raise KeyError(f"{video}: music_id {unknown[0]} is not in the library's tracks")
        own = by_id[music_id]
        top = list(top)[:k]
        report.per_video.append({"video": video, "music_id": music_id, "top": top,
                                 "counts": counts(own, [by_id[m] for m in top]), "chance": chance(own, tracks, k)})
    return report
