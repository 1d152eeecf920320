"""A synthetic demo collection: short videos whose visuals follow their generated background music.

Everything is drawn from one integer seed. The samples and frames are plain float64/uint8 numpy
(identical on every machine we tried, AVX2 and AVX-512 numpy kernels alike), and the files are
byte-identical for a seed on one machine whatever the worker or CPU count; across machines the
encoders' own SIMD code paths may still change the compressed bytes.

Music. Each track has latent "mood" factors: tempo (70–170 BPM), mode (major/minor), key,
instrument (the timbre of its chords and melody: piano, strings, pluck, bell, chiptune) and
energy (0–1). Sections of 8 bars scale the energy locally (a quieter verse, a louder chorus).
The synthesis is plain numpy: additive / FM notes with envelopes, a bass on the chord roots,
chords of the progression in the mode and a melody on the scale, and drums on the beat grid
(beat k at k·60/tempo seconds) whose density and loudness grow with the local energy
(shaker → kick on 1 and 3 → four on the floor with snare and hats → sixteenth hats).
Notes never depend on what else is rendered, so any window of a track can be rendered alone
and equals the same slice of the full track sample for sample.

Visuals follow the music the way edited short videos do (``visual_style``):

- cuts fall on beats, every ``beats_per_cut`` beats (1, 2, 4 or 8: shorter shots for more
  energetic music; a per-video "editor" choice halves or doubles it now and then);
- on every beat, shapes pulse, the camera punches in and the picture flashes, more so with energy;
- motion speed (shapes, background drift, rotation, zoom) grows with tempo and energy;
- palette hue follows mode and instrument (major: warm hues, minor: cool hues; the instrument
  picks a sub-band), saturation follows energy, brightness follows mode and energy.

Nuisance factors vary independently of the music: frame size (144×256 or 180×320), letterbox
or pillarbox bars, shape kind, count and size, background texture, accent hue, a small colour
grade (hue, saturation and brightness offsets), per-shot layout and motion directions, camera
jitter and film grain.

Layout written by :func:`write_track_file` / :func:`write_video_file` (driven by
``stages.demo_data``): videos are vertical H.264/AAC mp4 at 15 fps, 22.05 kHz mono audio,
6–12 s; library tracks are mp3 (22.05 kHz mono, ID3 title/artist/album tags), 20–60 s.
ffmpeg runs single-threaded (decoders and encoders) with bitexact flags, so the same seed gives
identical files whatever the number of workers or CPUs.
"""

from __future__ import annotations

import bisect
import colorsys
import functools
import math
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from mvbind.errors import MediaError, MvbindError
from mvbind.pipeline.media.audio import write_wav
from mvbind.pipeline.media.ffmpeg import run_ffmpeg

SAMPLE_RATE = 22050
FPS = 15
INSTRUMENTS = ("piano", "strings", "pluck", "bell", "chiptune")
MODES = ("major", "minor")
SCALES = {"major": (0, 2, 4, 5, 7, 9, 11), "minor": (0, 2, 3, 5, 7, 8, 10)}
PROGRESSIONS = {  # scale degrees (0 = tonic), one chord per bar
    "major": ((0, 4, 5, 3), (0, 3, 4, 0), (5, 3, 0, 4), (0, 5, 3, 4)),
    "minor": ((0, 5, 2, 6), (0, 3, 4, 0), (0, 6, 5, 6), (0, 3, 6, 4)),
}
SECTION_BARS = 8
SECTION_LEVELS = (0.7, 1.0, 1.0, 1.25)
FRAME_SIZES = ((144, 256), (180, 320))  # (width, height): vertical
BORDERS = ("none", "letterbox", "pillarbox")
SHAPE_KINDS = ("circle", "square", "triangle", "star", "ring", "bar", "mixed")
BACKGROUNDS = ("gradient", "radial", "stripes", "checker", "blobs")
# Hue bands in degrees: major music gets warm colours, minor music cool ones.
HUE_BANDS = {"major": (-15.0, 75.0), "minor": (165.0, 285.0)}
MP3_BITRATE = "64k"
AAC_BITRATE = "64k"


class DemoError(MvbindError):
    """ffmpeg could not write a demo file."""


# --------------------------------------------------------------------------------------------
# Specs (pure data: everything a worker needs to render one file)


@dataclass(frozen=True)
class TrackSpec:
    music_id: str
    seed: int
    title: str
    artist: str
    duration: float  # seconds
    tempo: float  # BPM; beat k is at k * 60 / tempo seconds
    mode: str
    key: int  # 0 = C
    instrument: str
    energy: float  # 0..1, before the section levels
    progression: tuple[int, ...]
    sections: tuple[float, ...]  # energy level of each 8-bar section
    distractor: bool = False

    @property
    def beat(self) -> float:
        return 60.0 / self.tempo

    @property
    def samples(self) -> int:
        return int(round(self.duration * SAMPLE_RATE))

    def bar_energy(self, bar: int) -> float:
        level = self.sections[min(bar // SECTION_BARS, len(self.sections) - 1)]
        return float(min(1.0, max(0.05, self.energy * level)))

    def energy_between(self, start: float, end: float) -> float:
        """Mean local energy over [start, end) seconds (the bars weighted by their overlap)."""
        bar = 4 * self.beat
        total = weight = 0.0
        for b in range(int(start // bar), int(math.ceil(end / bar))):
            overlap = min(end, (b + 1) * bar) - max(start, b * bar)
            if overlap > 0:
                total += overlap * self.bar_energy(b)
                weight += overlap
        return total / weight if weight else self.energy


@dataclass(frozen=True)
class VideoSpec:
    id: str
    seed: int
    music_id: str
    offset: float  # where the video's music starts in the track, seconds
    duration: float  # seconds; a whole number of frames and of audio samples
    width: int
    height: int
    border: str  # none | letterbox | pillarbox
    box: tuple[int, int, int, int]  # picture inside the frame: x0, y0, x1, y1 (end-exclusive)
    shape_kind: str
    shape_count: int
    shape_scale: float
    background: str
    accent: float  # hue offset of the second palette colour, degrees
    hue_jitter: float  # degrees
    grade_saturation: float  # colour grading: added to the style's saturation
    grade_value: float  # … and to its brightness
    jitter_px: float  # camera shake amplitude
    grain: float  # film grain standard deviation (grey levels)
    cut_octave: int  # editor's choice: beats_per_cut × 2**cut_octave

    @property
    def frames(self) -> int:
        return int(round(self.duration * FPS))

    @property
    def offset_samples(self) -> int:
        return int(round(self.offset * SAMPLE_RATE))


@dataclass(frozen=True)
class Style:
    """The visual parameters that follow the music (see the module docstring)."""

    hue: float  # degrees
    saturation: float
    value: float
    speed: float  # shape speed, fractions of the picture width per second
    pulse: float  # beat pulse amplitude
    beats_per_cut: int
    energy: float  # local energy of the segment that drove the rest


def visual_style(track: TrackSpec, video: VideoSpec) -> Style:
    energy = track.energy_between(video.offset, video.offset + video.duration)
    lo, hi = HUE_BANDS[track.mode]
    band = (hi - lo) / len(INSTRUMENTS)
    hue = (lo + band * (INSTRUMENTS.index(track.instrument) + 0.5) + video.hue_jitter) % 360.0
    major = track.mode == "major"
    target = 2.8 - 2.0 * energy  # seconds per shot
    beats = 2 ** int(np.clip(round(math.log2(target / track.beat)), 0, 3))
    beats = int(np.clip(beats * 2 ** video.cut_octave, 1, 8))
    return Style(
        hue=round(hue, 3),
        saturation=round(0.3 + 0.6 * energy, 4),
        value=round(0.42 + 0.16 * major + 0.32 * energy, 4),
        speed=round(0.06 + 0.5 * (track.tempo / 170.0) * (0.2 + 0.8 * energy), 4),
        pulse=round(0.08 + 0.45 * energy, 4),
        beats_per_cut=beats,
        energy=round(energy, 4),
    )


def cut_frame(t: float) -> int:
    """The first frame shown at or after video time t (the frame a cut at t appears in)."""
    return int(math.ceil(t * FPS - 1e-6))


def cut_times(track: TrackSpec, video: VideoSpec, style: Style) -> list[float]:
    """Cuts in video seconds: the beats k ≡ 0 (mod beats_per_cut) that fall inside the video
    (their cut frame is neither the first nor past the last frame)."""
    p, m = track.beat, style.beats_per_cut
    first = int(math.floor(video.offset / p))
    last = int(math.ceil((video.offset + video.duration) / p))
    out = []
    for k in range(first, last + 1):
        t = k * p - video.offset
        if k % m == 0 and t > 0 and 1 <= cut_frame(t) <= video.frames - 1:
            out.append(t)
    return out


def beat_times(track: TrackSpec, start: float, end: float) -> list[float]:
    """Beats of the track in [start, end], relative to start."""
    p = track.beat
    return [k * p - start for k in range(int(math.ceil(start / p)), int(math.floor(end / p)) + 1)]


# --------------------------------------------------------------------------------------------
# Planning a collection


_ADJECTIVES = ("Velvet", "Neon", "Golden", "Quiet", "Electric", "Paper", "Silver", "Midnight",
               "Crimson", "Hollow", "Bright", "Distant", "Wild", "Frozen", "Sunny", "Lucky",
               "Broken", "Gentle", "Cosmic", "Faded", "Secret", "Summer", "Winter", "Little")
_NOUNS = ("Harbor", "Lights", "Garden", "Engine", "Rivers", "Skyline", "Echoes", "Parade",
          "Mirrors", "Waves", "Orbit", "Lanterns", "Highway", "Meadow", "Signals", "Comets",
          "Daydream", "Avenue", "Carousel", "Satellites", "Tides", "Fireflies", "Atlas", "Bloom")
_FIRST = ("Ada", "Milo", "Noor", "Iris", "Theo", "Luca", "Mira", "Otto", "Rosa", "Kai",
          "Zoe", "Ivan", "Lena", "Omar", "Yuki", "Sami")
_LAST = ("Vale", "Moreau", "Lindqvist", "Okafor", "Tanaka", "Silva", "Novak", "Brandt",
         "Reyes", "Hale", "Koval", "Dune", "Ashby", "Quinn")


def _name(rng: np.random.Generator) -> tuple[str, str]:
    title = f"{rng.choice(_ADJECTIVES)} {rng.choice(_NOUNS)}"
    if rng.random() < 0.5:
        artist = f"{rng.choice(_FIRST)} {rng.choice(_LAST)}"
    else:
        artist = f"The {rng.choice(_ADJECTIVES)} {rng.choice(_NOUNS)}"
    return str(title), str(artist)


def _rng(seed: int, *path: int) -> np.random.Generator:
    """A generator for one item: the same (seed, path) always gives the same stream."""
    return np.random.default_rng([seed, *path])


def make_track_spec(seed: int, index: int, duration: float, *, distractor: bool = False) -> TrackSpec:
    rng = _rng(seed, 1, index)
    title, artist = _name(rng)
    mode = str(rng.choice(MODES))
    tempo = round(float(rng.uniform(70.0, 170.0)), 1)
    beat = 60.0 / tempo
    n_sections = int(math.ceil(duration / (4 * beat * SECTION_BARS))) + 1
    return TrackSpec(
        music_id=f"m{index:04d}",
        seed=int(rng.integers(2**31)),
        title=title,
        artist=artist,
        duration=duration,
        tempo=tempo,
        mode=mode,
        key=int(rng.integers(12)),
        instrument=str(rng.choice(INSTRUMENTS)),
        energy=round(float(rng.uniform(0.05, 1.0)), 3),
        progression=tuple(int(d) for d in PROGRESSIONS[mode][int(rng.integers(4))]),
        sections=tuple(float(x) for x in rng.choice(SECTION_LEVELS, size=n_sections)),
        distractor=distractor,
    )


def _content_box(width: int, height: int, border: str, rng: np.random.Generator) -> tuple[int, int, int, int]:
    if border == "letterbox":  # a landscape or square picture in a vertical frame: bars top and bottom
        aspect = float(rng.choice([16 / 9, 4 / 3, 1.0]))
        ch = int(round(width / aspect / 2)) * 2
        y0 = (height - ch) // 2 // 2 * 2
        return (0, y0, width, y0 + ch)
    if border == "pillarbox":  # a taller picture: bars left and right
        cw = int(round(width * float(rng.uniform(0.66, 0.84)) / 2)) * 2
        x0 = (width - cw) // 2 // 2 * 2
        return (x0, 0, x0 + cw, height)
    return (0, 0, width, height)


def make_video_spec(seed: int, index: int, track: TrackSpec, *, duration: float, offset: float,
                    border: str) -> VideoSpec:
    rng = _rng(seed, 2, index)
    width, height = FRAME_SIZES[int(rng.integers(len(FRAME_SIZES)))]
    return VideoSpec(
        id=f"v{index:04d}",
        seed=int(rng.integers(2**31)),
        music_id=track.music_id,
        offset=offset,
        duration=duration,
        width=width,
        height=height,
        border=border,
        box=_content_box(width, height, border, rng),
        shape_kind=str(rng.choice(SHAPE_KINDS)),
        shape_count=int(rng.integers(3, 11)),
        shape_scale=round(float(rng.uniform(0.6, 1.5)), 3),
        background=str(rng.choice(BACKGROUNDS)),
        accent=round(float(rng.choice([-1, 1]) * rng.uniform(12, 32)), 2),
        hue_jitter=round(float(rng.uniform(-5, 5)), 2),
        grade_saturation=round(float(rng.uniform(-0.1, 0.1)), 3),
        grade_value=round(float(rng.uniform(-0.06, 0.06)), 3),
        jitter_px=round(float(rng.choice([0.0, rng.uniform(0.3, 2.0)])), 2),
        grain=round(float(rng.uniform(0.0, 4.0)), 2),
        cut_octave=int(rng.choice([-1, 0, 0, 0, 0, 0, 0, 1])),
    )


@dataclass
class Plan:
    seed: int
    tracks: list[TrackSpec]  # the whole library: used tracks and distractors, by music_id
    videos: list[VideoSpec]
    tracks_by_id: dict[str, TrackSpec] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.tracks_by_id = {t.music_id: t for t in self.tracks}


def _quantize(x: float, step: float) -> float:
    return round(round(x / step) * step, 6)


def plan_collection(seed: int, videos: int, distractors: int, *,
                    video_seconds: tuple[float, float] = (6.0, 12.0),
                    track_seconds: tuple[float, float] = (20.0, 60.0),
                    reuse: float = 0.2) -> Plan:
    """Draw every spec. About `reuse` of the videos share a track with another video.

    The library holds every track a video uses plus `distractors` tracks nobody uses, in random
    order of music_id. Track durations are drawn from `track_seconds` but are never shorter than
    the longest video plus a margin; video durations are whole 0.2 s (3 frames, 4410 samples).
    """
    vmin, vmax = video_seconds
    tmin, tmax = track_seconds
    if videos < 0 or distractors < 0:
        raise ValueError("counts must be >= 0")
    if not 0.4 <= vmin <= vmax:
        raise ValueError(f"video_seconds {video_seconds}: need 0.4 <= min <= max")
    top = np.random.default_rng([seed, 0])
    used = max(1, min(videos - 1, int(round(videos * (1.0 - reuse))))) if videos else 0
    n_tracks = used + distractors
    fade = 2.0
    track_min = max(tmin, vmax + min(fade, 0.1 * tmax) + 1.0)
    durations = [_quantize(float(top.uniform(track_min, max(track_min, tmax))), 0.1) for _ in range(n_tracks)]
    order = top.permutation(n_tracks)  # which ids are used (the first `used` of the permutation)
    unused = set(order[used:].tolist())
    tracks = [make_track_spec(seed, i, durations[i], distractor=i in unused) for i in range(n_tracks)]
    used_tracks = [tracks[i] for i in order[:used]]

    # Video → track: each used track once, the rest of the videos pick among a few "popular" ones.
    assignment = list(range(used))
    popular = max(1, int(round(0.1 * used)))
    weights = 1.0 / np.sqrt(np.arange(1, popular + 1))
    assignment += top.choice(popular, size=videos - used, p=weights / weights.sum()).tolist() if used else []
    assignment = [assignment[i] for i in top.permutation(len(assignment))]

    # Borders: a fixed share, shuffled, so even a tiny collection has both kinds.
    n_letter = int(round(0.2 * videos))
    n_pillar = int(round(0.1 * videos))
    if videos >= 3:
        n_letter, n_pillar = max(1, n_letter), max(1, n_pillar)
    deck = ["letterbox"] * n_letter + ["pillarbox"] * n_pillar
    deck += ["none"] * (videos - len(deck))
    deck = [deck[i] for i in top.permutation(videos)]

    specs: list[VideoSpec] = []
    first_offset: dict[str, float] = {}
    for j in range(videos):
        track = used_tracks[assignment[j]]
        duration = _quantize(float(top.uniform(vmin, vmax)), 0.2)
        latest = track.duration - min(fade, 0.1 * track.duration) - duration
        if track.music_id in first_offset and top.random() < 0.5:
            offset = min(first_offset[track.music_id], latest)  # the same segment again
        else:
            offset = _quantize(float(top.uniform(0.0, max(0.0, latest))), 0.01)
        first_offset.setdefault(track.music_id, offset)
        specs.append(make_video_spec(seed, j, track, duration=duration, offset=offset, border=deck[j]))
    return Plan(seed=seed, tracks=tracks, videos=specs)


# --------------------------------------------------------------------------------------------
# Music synthesis


VOICE_GAIN = {"bass": 0.34, "chord": 0.14, "melody": 0.22, "kick": 0.62, "snare": 0.32, "hat": 0.10}
RELEASE = {"piano": 0.25, "strings": 0.3, "pluck": 0.15, "bell": 0.6, "chiptune": 0.03, "bass": 0.06}


def midi_hz(midi: int) -> float:
    return 440.0 * 2.0 ** ((midi - 69) / 12.0)


@dataclass(frozen=True)
class Event:
    start: int  # sample
    voice: str  # bass | chord | melody | kick | snare | hat
    midi: int
    length: int  # samples (gate); the waveform rings on for the instrument's release
    velocity: float


def _partials(t: np.ndarray, f: float, amps, decays, stretch: float = 0.0) -> np.ndarray:
    out = np.zeros_like(t)
    for h, (a, d) in enumerate(zip(amps, decays), start=1):
        fh = f * h * math.sqrt(1.0 + stretch * h * h)
        if fh >= 0.45 * SAMPLE_RATE:
            break
        out += a * np.sin(2 * math.pi * fh * t) * np.exp(-d * t)
    return out


@functools.lru_cache(maxsize=384)
def _note_wave(timbre: str, midi: int, length: int) -> np.ndarray:
    """One note of unit scale, gate `length` samples, followed by the release."""
    f = midi_hz(midi)
    release = RELEASE[timbre]
    n = length + int(release * SAMPLE_RATE)
    t = np.arange(n) / SAMPLE_RATE
    gate_t = length / SAMPLE_RATE
    if timbre == "piano":
        h = np.arange(1, 9)
        w = _partials(t, f, 1.0 / h**1.4, 1.2 + 0.7 * h, stretch=0.0004)
        attack = 0.004
    elif timbre == "strings":
        h = np.arange(1, 13)
        vib = 0.003 * np.sin(2 * math.pi * 5.0 * t)
        phase = 2 * math.pi * f * (t + np.cumsum(vib) / SAMPLE_RATE)
        w = sum((1.0 / k) * (np.sin(k * phase * 1.0023) + np.sin(k * phase * 0.9977))
                for k in h if f * k < 0.45 * SAMPLE_RATE) * 0.5
        attack = 0.12
    elif timbre == "pluck":
        h = np.arange(1, 11)
        w = _partials(t, f, 1.0 / h, 3.0 + 2.5 * h)
        attack = 0.002
    elif timbre == "bell":
        index = 3.0 * np.exp(-4.0 * t)
        w = np.sin(2 * math.pi * f * t + index * np.sin(2 * math.pi * 3.5 * f * t)) * np.exp(-1.6 * t)
        attack = 0.002
    elif timbre == "chiptune":
        h = np.arange(1, 12, 2)
        w = _partials(t, f, 1.0 / h, np.zeros(len(h))) * (0.65 + 0.35 * np.exp(-8.0 * t))
        attack = 0.004
    elif timbre == "bass":
        w = (np.sin(2 * math.pi * f * t) + 0.3 * np.sin(4 * math.pi * f * t)) * np.exp(-0.8 * t)
        attack = 0.008
    else:
        raise ValueError(f"unknown timbre {timbre!r}")
    env = np.minimum(1.0, t / attack)
    tail = t > gate_t
    env[tail] *= np.exp(-(t[tail] - gate_t) / (release / 5.0))
    return w * env


@functools.lru_cache(maxsize=64)
def _drums(seed: int) -> dict[str, np.ndarray]:
    """One kick, snare and hat sample per track (a drum machine plays the same sample each time)."""
    rng = np.random.default_rng([seed, 99])
    sr = SAMPLE_RATE
    t = np.arange(int(0.35 * sr)) / sr
    f = 45.0 + 100.0 * np.exp(-t / 0.035)
    kick = np.sin(2 * math.pi * np.cumsum(f) / sr) * np.exp(-t / 0.13)
    kick[: int(0.003 * sr)] += rng.uniform(-0.5, 0.5, int(0.003 * sr))
    t = np.arange(int(0.22 * sr)) / sr
    snare = (0.7 * rng.uniform(-1, 1, t.size) * np.exp(-t / 0.05)
             + 0.5 * np.sin(2 * math.pi * 190 * t) * np.exp(-t / 0.06))
    t = np.arange(int(0.06 * sr)) / sr
    noise = rng.uniform(-1, 1, t.size + 1)
    hat = np.diff(noise) * np.exp(-t / 0.012)
    return {"kick": kick, "snare": snare, "hat": hat}


@functools.lru_cache(maxsize=64)
def track_events(track: TrackSpec) -> tuple[Event, ...]:
    """Every note and drum hit of the track, in a fixed order."""
    rng = np.random.default_rng([track.seed, 1])
    sr, p = SAMPLE_RATE, track.beat
    scale = SCALES[track.mode]
    n_bars = int(math.ceil(track.duration / (4 * p)))
    events: list[Event] = []

    def at(beat: float) -> int:
        return int(round(beat * p * sr))

    def length(beats: float) -> int:
        return max(1, int(round(beats * p * sr)))

    def pitch(degree: int, base: int) -> int:
        octave, step = divmod(degree, 7)
        return base + track.key + scale[step] + 12 * octave

    def hum(v: float) -> float:
        return float(v * (1.0 + 0.08 * rng.standard_normal()))

    melody_degree = 7 + int(rng.integers(0, 5))
    arp = [int(x) for x in rng.permutation(3)]
    for bar in range(n_bars):
        e = track.bar_energy(bar)
        level = 0.55 + 0.45 * e
        b0 = 4 * bar
        chord = track.progression[bar % len(track.progression)]
        triad = [pitch(chord + 2 * i, 48) for i in range(3)]
        root = pitch(chord, 36)
        if root > 47:
            root -= 12
        # bass
        if e < 0.35:
            beats, dur = (0, 2), 1.9
        elif e < 0.7:
            beats, dur = (0, 1, 2, 3), 0.9
        else:
            beats, dur = tuple(x / 2 for x in range(8)), 0.45
        for b in beats:
            events.append(Event(at(b0 + b), "bass", root, length(dur), hum(level)))
        # chords
        if e < 0.4:
            for note in triad:
                events.append(Event(at(b0), "chord", note, length(3.9), hum(0.7 * level)))
            for b in range(4):  # an arpeggio marks every beat
                events.append(Event(at(b0 + b), "chord", triad[arp[b % 3]] + 12, length(0.9), hum(0.8 * level)))
        else:
            stabs = range(4) if e < 0.75 else [x / 2 for x in range(8)]
            for b in stabs:
                accent = 1.0 if b == int(b) else 0.55
                for note in triad:
                    events.append(Event(at(b0 + b), "chord", note, length(0.45), hum(accent * level)))
        # melody on the scale, a random walk that lands on chord tones on the beat
        step = 0.5 if e > 0.5 else 1.0
        slots = [x * step for x in range(int(4 / step))]
        for s in slots:
            if rng.random() > 0.6:
                continue
            melody_degree = int(np.clip(melody_degree + rng.integers(-2, 3), 4, 14))
            if s == int(s) and rng.random() < 0.6:
                melody_degree = chord + 7 + 2 * int(rng.integers(0, 3))
            events.append(Event(at(b0 + s), "melody", pitch(melody_degree, 48), length(0.9 * step), hum(level)))
        # drums
        if e < 0.3:
            for b in range(4):
                events.append(Event(at(b0 + b), "hat", 0, 1, hum(0.9 * level)))
        else:
            kicks = (0, 2) if e < 0.55 else (0, 1, 2, 3)
            for b in kicks:
                events.append(Event(at(b0 + b), "kick", 0, 1, hum(level)))
            if e >= 0.4:
                for b in (1, 3):
                    events.append(Event(at(b0 + b), "snare", 0, 1, hum(level)))
            if e >= 0.45:
                div = 4 if e >= 0.8 else 2
                for x in range(4 * div):
                    accent = 1.0 if x % div == 0 else 0.6
                    events.append(Event(at(b0 + x / div), "hat", 0, 1, hum(accent * level)))
    end = track.samples
    return tuple(ev for ev in events if ev.start < end)


def _master_gain(track: TrackSpec) -> float:
    return 10 ** ((-9.0 + 9.0 * track.energy) / 20.0)


def synth_track(track: TrackSpec, start: int = 0, count: int | None = None) -> np.ndarray:
    """Samples [start, start+count) of the track as float64 in (-1, 1).

    Any window equals the same slice of the whole track exactly (each note is computed on its
    own and added in a fixed order), so a video's segment needs no full render.
    """
    total = track.samples
    if count is None:
        count = total - start
    buf = np.zeros(count)
    drums = _drums(track.seed)
    for ev in track_events(track):
        if ev.voice in drums:
            w = drums[ev.voice]
        else:
            timbre = "bass" if ev.voice == "bass" else track.instrument
            w = _note_wave(timbre, ev.midi, ev.length)
        s0 = ev.start - start
        s1 = s0 + w.size
        if s1 <= 0 or s0 >= count:
            continue
        a, b = max(s0, 0), min(s1, count)
        buf[a:b] += (ev.velocity * VOICE_GAIN[ev.voice]) * w[a - s0:b - s0]
    out = 0.95 * np.tanh(buf * _master_gain(track))
    # the track fades out over its last 2 s (or 10 %)
    fade = int(min(2.0, 0.1 * track.duration) * SAMPLE_RATE)
    idx = np.arange(start, start + count)
    tail = idx >= total - fade
    if tail.any():
        out[tail] *= np.clip((total - idx[tail]) / fade, 0.0, 1.0)
    return out


def to_pcm16(x: np.ndarray) -> np.ndarray:
    return np.clip(np.round(x * 32767.0), -32768, 32767).astype("<i2")


def video_audio(track: TrackSpec, video: VideoSpec) -> np.ndarray:
    """The video's soundtrack: its segment of the track, with 20 ms fades at the edges."""
    n = int(round(video.duration * SAMPLE_RATE))
    x = synth_track(track, video.offset_samples, n)
    ramp = min(n // 2, int(0.02 * SAMPLE_RATE))
    env = np.ones(n)
    env[:ramp] = np.linspace(0.0, 1.0, ramp, endpoint=False)
    env[n - ramp:] = np.linspace(1.0, 0.0, ramp, endpoint=False)
    return x * env


# --------------------------------------------------------------------------------------------
# Video rendering


def _hsv(h: float, s: float, v: float) -> tuple[int, int, int]:
    r, g, b = colorsys.hsv_to_rgb((h % 360.0) / 360.0, float(np.clip(s, 0, 1)), float(np.clip(v, 0, 1)))
    return int(round(r * 255)), int(round(g * 255)), int(round(b * 255))


def _background(kind: str, h: int, w: int, c1, c2, rng: np.random.Generator) -> np.ndarray:
    import cv2

    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    if kind == "gradient":
        a = rng.uniform(0, 2 * math.pi)
        f = xx * math.cos(a) + yy * math.sin(a)
        f = (f - f.min()) / max(1e-6, float(f.max() - f.min()))
    elif kind == "radial":
        cx, cy = rng.uniform(0.2, 0.8) * w, rng.uniform(0.2, 0.8) * h
        f = np.sqrt((xx - cx) ** 2 + (yy - cy) ** 2)
        f = f / max(1e-6, float(f.max()))
    elif kind == "stripes":
        a = rng.uniform(0, math.pi)
        lam = rng.uniform(18, 48)
        f = 0.5 + 0.5 * np.sin(2 * math.pi * (xx * math.cos(a) + yy * math.sin(a)) / lam)
    elif kind == "checker":
        s = int(rng.integers(10, 28))
        f = (((xx // s) + (yy // s)) % 2).astype(np.float32)
        f = cv2.GaussianBlur(f, (0, 0), 1.5)
    elif kind == "blobs":
        small = rng.random((int(rng.integers(3, 6)), int(rng.integers(3, 6)))).astype(np.float32)
        f = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
        f = np.clip(f, 0, 1)
    else:
        raise ValueError(kind)
    f = f[..., None]
    img = np.asarray(c1, np.float32) * (1 - f) + np.asarray(c2, np.float32) * f
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


def _polygon(kind: str, cx: float, cy: float, r: float, angle: float) -> np.ndarray:
    if kind == "square":
        n, radii = 4, [r]
    elif kind == "triangle":
        n, radii = 3, [r]
    elif kind == "star":
        n, radii = 10, [r, 0.45 * r]
    elif kind == "bar":
        pts = np.array([[-1.6 * r, -0.35 * r], [1.6 * r, -0.35 * r], [1.6 * r, 0.35 * r], [-1.6 * r, 0.35 * r]])
        c, s = math.cos(angle), math.sin(angle)
        rot = pts @ np.array([[c, s], [-s, c]])
        return rot + [cx, cy]
    else:
        raise ValueError(kind)
    k = np.arange(n)
    rr = np.array([radii[i % len(radii)] for i in k])
    a = angle + 2 * math.pi * k / n
    return np.stack([cx + rr * np.cos(a), cy + rr * np.sin(a)], axis=1)


def _draw(img: np.ndarray, kind: str, cx: float, cy: float, r: float, angle: float, color) -> None:
    import cv2

    shift = 4
    one = 1 << shift
    if kind in ("circle", "ring"):
        center = (int(round(cx * one)), int(round(cy * one)))
        thick = -1 if kind == "circle" else max(2, int(round(r * 0.3)))
        cv2.circle(img, center, int(round(r * one)), color, thick, cv2.LINE_AA, shift)
        return
    pts = np.round(_polygon(kind, cx, cy, r, angle) * one).astype(np.int32)
    cv2.fillPoly(img, [pts], color, cv2.LINE_AA, shift)


@dataclass
class _Shot:
    start: float
    bg: np.ndarray
    margin: int
    drift: tuple[float, float]  # background drift direction
    shapes: list[tuple]  # (kind, x0, y0, vx, vy, r, angle0, omega, color)
    zoom: float  # zoom rate per second


def _make_shot(video: VideoSpec, style: Style, start: float, index: int, cw: int, ch: int) -> _Shot:
    rng = _rng(video.seed, 3, index)
    margin = max(8, int(0.15 * max(cw, ch)))
    sat = float(np.clip(style.saturation + video.grade_saturation, 0.15, 1.0))
    # shots alternate a little lighter and darker around the video's brightness (a cut is visible)
    tone = (-1) ** index * rng.uniform(0.06, 0.12)
    val = float(np.clip(style.value + video.grade_value + tone, 0.36, 1.0))
    c1 = _hsv(style.hue, sat, val)
    c2 = _hsv(style.hue + video.accent, sat * 0.75, val * 0.7)
    kind = video.background if rng.random() < 0.5 else str(rng.choice(BACKGROUNDS))
    bg = _background(kind, ch + 2 * margin, cw + 2 * margin, c1, c2, rng)
    a = rng.uniform(0, 2 * math.pi)
    shapes = []
    base_r = 0.09 * min(cw, ch) * video.shape_scale
    speed = style.speed * cw
    for _ in range(video.shape_count):
        kind = video.shape_kind if video.shape_kind != "mixed" else str(rng.choice(SHAPE_KINDS[:-1]))
        d = rng.uniform(0, 2 * math.pi)
        sp = speed * rng.uniform(0.6, 1.4)
        dark = rng.random() < 0.35
        color = _hsv(style.hue + rng.uniform(-18, 18), min(1.0, sat + 0.1),
                     val * 0.5 if dark else min(1.0, val + 0.25))
        omega = float(rng.choice([-1, 1])) * 2 * math.pi * style.speed * rng.uniform(0.5, 1.5)
        shapes.append((kind, rng.uniform(0, cw), rng.uniform(0, ch), sp * math.cos(d), sp * math.sin(d),
                       base_r * rng.uniform(0.6, 1.4), rng.uniform(0, 2 * math.pi), omega, color))
    zoom = float(rng.choice([-1, 1])) * 0.25 * style.speed
    return _Shot(start, bg, margin, (math.cos(a), math.sin(a)), shapes, zoom)


def _tri(x: float, m: float) -> float:
    """A triangle wave in [-m, m] with slope 1: drift that turns back at the margin."""
    if m <= 0:
        return 0.0
    y = x % (4 * m)
    return (y - m) if y < 2 * m else (3 * m - y)


def render_frames(track: TrackSpec, video: VideoSpec, style: Style | None = None):
    """Yield the video's frames as uint8 RGB arrays of shape (height, width, 3)."""
    import cv2

    style = style or visual_style(track, video)
    x0, y0, x1, y1 = video.box
    cw, ch = x1 - x0, y1 - y0
    cuts = cut_times(track, video, style)
    starts = [0.0, *cuts]
    frames_at = [cut_frame(c) for c in cuts]
    shots: dict[int, _Shot] = {}
    rng = _rng(video.seed, 4)
    grain = None
    if video.grain > 0:
        plate = _rng(video.seed, 5).normal(0.0, video.grain, (ch + 32, cw + 32))
        grain = np.round(plate).astype(np.int16)[..., None]
    p = track.beat
    shake = np.zeros(2)
    for f in range(video.frames):
        t = f / FPS
        s = bisect.bisect_right(frames_at, f)
        if s not in shots:
            shots.clear()
            shots[s] = _make_shot(video, style, starts[s], s, cw, ch)
        shot = shots[s]
        ts = t - shot.start
        # beat pulse: 1 on the beat, decaying over the beat; downbeats a bit stronger
        T = video.offset + t
        k = int(math.floor(T / p + 1e-9))
        phase = T / p - k
        pulse = math.exp(-5.0 * phase) * (1.3 if k % 4 == 0 else 1.0) * style.pulse
        m = shot.margin
        drift = 0.2 * style.speed * cw * ts
        ox = int(round(m + _tri(drift * shot.drift[0], m - 1)))
        oy = int(round(m + _tri(drift * shot.drift[1], m - 1)))
        img = np.ascontiguousarray(shot.bg[oy:oy + ch, ox:ox + cw])
        for kind, sx, sy, vx, vy, r, a0, om, color in shot.shapes:
            rr = r * (1.0 + 0.8 * pulse)
            span_x, span_y = cw + 6 * r, ch + 6 * r  # wrap around well outside the picture
            cx = (sx + vx * ts + 3 * r) % span_x - 3 * r
            cy = (sy + vy * ts + 3 * r) % span_y - 3 * r
            _draw(img, kind, cx, cy, rr, a0 + om * ts, color)
        # camera: slow zoom, a punch on the beat, shake (nuisance)
        z = 1.0 + 0.08 + shot.zoom * ts + 0.08 * pulse
        z = max(1.0, z)
        if video.jitter_px:  # handheld shake: a smooth random walk (AR(1)) of std jitter_px
            shake = 0.8 * shake + rng.normal(0.0, video.jitter_px * 0.6, 2)
        jx, jy = float(shake[0]), float(shake[1])
        M = np.array([[z, 0, (1 - z) * cw / 2 + jx], [0, z, (1 - z) * ch / 2 + jy]], np.float32)
        img = cv2.warpAffine(img, M, (cw, ch), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        flash = 0.15 * pulse
        if flash > 0.01:
            img = cv2.addWeighted(img, 1.0 - flash, np.full_like(img, 255), flash, 0.0)
        if grain is not None:  # a random window of one noise plate per video: cheap film grain
            gx, gy = (int(g) for g in rng.integers(0, 32, 2))
            img = np.clip(img + grain[gy:gy + ch, gx:gx + cw], 0, 255).astype(np.uint8)
        frame = np.zeros((video.height, video.width, 3), np.uint8)
        frame[y0:y1, x0:x1] = img
        yield frame


# --------------------------------------------------------------------------------------------
# Writing files


BITEXACT = ["-fflags", "+bitexact", "-flags:v", "+bitexact", "-flags:a", "+bitexact", "-map_metadata", "-1"]


def _ffmpeg(args: list[str], path: Path, data: bytes | None = None) -> None:
    """Run ffmpeg with `args` (inputs, then output options, the output last), single-threaded.

    `-threads` is per file: before the inputs it sets the decoders' threads only. It is repeated
    right before the output so the encoders are single-threaded too: libx264 otherwise picks its
    thread count from the CPUs the process may use, and its output bytes depend on it.
    """
    *head, out = args
    try:
        run_ffmpeg(["-threads", "1", *head, "-threads", "1", out], what=path, data=data)
    except MediaError as err:
        raise DemoError(str(err)) from None


def _part(path: Path) -> Path:
    return path.with_name(f".part-{path.name}")


def write_track_file(track: TrackSpec, path: Path) -> Path:
    """The full track as mp3 with title/artist/album tags (written to a temporary name, then renamed)."""
    path = Path(path)
    pcm = to_pcm16(synth_track(track))
    tmp = _part(path)
    _ffmpeg(["-f", "s16le", "-ar", str(SAMPLE_RATE), "-ac", "1", "-i", "pipe:0",
             "-c:a", "libmp3lame", "-b:a", MP3_BITRATE, "-compression_level", "7", *BITEXACT,
             "-metadata", f"title={track.title}", "-metadata", f"artist={track.artist}",
             "-metadata", "album=mvbind demo", "-metadata", f"comment={track.music_id}",
             "-id3v2_version", "3", "-write_xing", "1", "-f", "mp3", str(tmp)], path, pcm.tobytes())
    os.replace(tmp, path)
    return path


def write_video_file(track: TrackSpec, video: VideoSpec, path: Path) -> Path:
    """Render the video and mux it with its music segment into H.264/AAC mp4."""
    path = Path(path)
    style = visual_style(track, video)
    frames = b"".join(f.tobytes() for f in render_frames(track, video, style))
    pcm = to_pcm16(video_audio(track, video))
    tmp = _part(path)
    fd, wav = tempfile.mkstemp(suffix=".wav", prefix="mvbind-demo-")
    os.close(fd)
    try:
        write_wav(Path(wav), pcm, SAMPLE_RATE)
        _ffmpeg(["-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{video.width}x{video.height}",
                 "-r", str(FPS), "-i", "pipe:0", "-i", wav, "-map", "0:v", "-map", "1:a",
                 "-c:v", "libx264", "-preset", "veryfast", "-crf", "26", "-pix_fmt", "yuv420p", "-g", str(2 * FPS),
                 "-c:a", "aac", "-b:a", AAC_BITRATE, *BITEXACT, "-movflags", "+faststart",
                 "-f", "mp4", str(tmp)], path, frames)
    finally:
        os.unlink(wav)
    os.replace(tmp, path)
    return path


def track_record(track: TrackSpec, path: str) -> dict:
    d = asdict(track)
    d["path"] = path
    d["progression"] = list(track.progression)
    d["sections"] = list(track.sections)
    return d


def video_record(track: TrackSpec, video: VideoSpec, path: str) -> dict:
    style = visual_style(track, video)
    d = asdict(video)
    d["path"] = path
    d["box"] = list(video.box)
    d["style"] = asdict(style)
    cuts = cut_times(track, video, style)
    d["cuts"] = [round(c, 4) for c in cuts]
    d["cut_frames"] = [cut_frame(c) for c in cuts]
    d["tempo"] = track.tempo
    return d
