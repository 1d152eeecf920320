"""The `signal` encoder: hand-crafted audio (librosa) and video (OpenCV) features per clip.

A fast, CPU-only baseline beside ImageBind that goes through the same stage-one path (preparer in
the decoding workers, identity "embedder", the same cache and fingerprint). The features are the
embeddings: per clip, a fixed-length float32 vector, standardised in a fixed, data-independent way
(logs for rates and tempo, fixed centres and scales), so that most values lie within a few units of
zero and survive the cache's float16 storage.

Clip timing is that of the ImageBind inputs: ``[audio]`` clip_duration / clips_per_video for the
audio clips and ``[video]`` clip_duration / clips_per_video for the video clips, laid out by
``pipeline.sampler.clip_spans`` (no spatial crops). With the defaults a file gives (3, Da) audio
and (5, Dv) video features.

Audio: decode with ``pipeline.audio.decode_audio`` → mean of the channels → resample to
``sample_rate`` (soxr via librosa) → per clip, an STFT of its context window (``tempo_window``
seconds centred on the clip, kept inside the track; clips with the same window share it) → frame
features (onset envelope and onsets, beats, RMS, spectral centroid and contrast, MFCC, chroma) →
statistics of the frames whose centres fall in the clip. Tempo and beats come from
``librosa.beat.beat_track`` on the whole window (2 s is too short for a tempo); audio shorter than
``min_tempo_window`` has no tempo (tempo 0, ``tempo_known`` 0).

Video: the stream's frames are numbered as decord does (packets in pts order, duration =
frames / average fps, as ``pipeline.video``); per clip, frames at about ``frames_per_second`` are
decoded (keyframe seeks over the gaps, non-reference frames that are not needed are skipped) and
scaled by swscale straight to ``frame_size`` px on the long side, so a 1080p frame never becomes a
full-size RGB array. Letterbox/pillarbox bars (edge rows/columns dark in all sampled frames) are
cropped first (``remove_borders``), as MVBind does for ImageBind. Per clip: colour statistics, a
saturation-weighted hue histogram, shot cuts (total-variation distance of HSV histograms between
consecutive samples above ``cut_threshold``), and motion (Farneback optical flow, on ``flow_size``
grey frames, between consecutive samples that are not a cut).

`AUDIO_FEATURE_NAMES` / `VIDEO_FEATURE_NAMES` document every dimension for the default settings
(`audio_feature_names(settings)` / `video_feature_names(settings)` for others).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mvbind.errors import MediaError
from mvbind.pipeline.config.schema import SignalSettings
from mvbind.pipeline.media.borders import crop, detect_content_box
from mvbind.pipeline.media.sampler import clip_spans
from mvbind.pipeline.media.video import decode_video

# ---------------------------------------------------------------------------------------------
# Feature names and their fixed standardisation: value = (transform(raw) - centre) / scale


def _audio_spec(s: SignalSettings) -> list[tuple[str, float, float]]:
    spec = [
        ("tempo_log2_over_120bpm", 0.0, 1.0),  # log2(bpm / 120); 0 where unknown
        ("tempo_known", 0.0, 1.0),  # 1 if a tempo was estimated, else 0
        ("beat_strength_log1p", 1.0, 1.0),  # log1p(mean onset strength at the clip's beats)
        ("pulse_clarity_log", 0.5, 0.5),  # log(onset strength at beats / mean onset strength)
        ("onset_rate_log1p_per_s", 1.0, 1.0),  # log1p(onsets per second)
        ("onset_strength_mean_log1p", 0.5, 0.5),  # log1p(mean onset envelope)
        ("onset_strength_std_log1p", 0.5, 0.5),  # log1p(std of onset envelope)
        ("rms_db_mean", -30.0, 15.0),  # mean frame RMS in dBFS (floor -100)
        ("rms_db_std", 0.0, 5.0),  # std of frame RMS in dB (dynamics)
        ("rms_db_range", 0.0, 10.0),  # 95th - 5th percentile of frame RMS in dB
        ("centroid_log2_over_1khz", 0.5, 1.0),  # mean of log2(spectral centroid / 1 kHz)
        ("centroid_log2_std", 0.0, 0.5),  # std of log2 centroid (timbre movement)
    ]
    spec += [(f"contrast_{b}", 20.0, 8.0) for b in range(s.contrast_bands + 1)]  # dB, mean
    spec += [(f"mfcc_mean_{k:02d}", *_mfcc_mean_scale(k)) for k in range(s.n_mfcc)]
    spec += [(f"mfcc_std_{k:02d}", 0.0, 40.0 if k == 0 else 10.0) for k in range(s.n_mfcc)]
    spec += [(f"chroma_{p}", 0.4, 0.3) for p in _PITCHES]  # mean of max-normalised chroma
    return spec


def _mfcc_mean_scale(k: int) -> tuple[float, float]:
    if k == 0:
        return -250.0, 100.0  # energy term
    if k == 1:
        return 80.0, 40.0
    return 0.0, 20.0


_PITCHES = ("C", "Cs", "D", "Ds", "E", "F", "Fs", "G", "Gs", "A", "As", "B")


def _video_spec(s: SignalSettings) -> list[tuple[str, float, float]]:
    spec = [
        ("brightness", 0.45, 0.25),  # mean grey level in [0, 1]
        ("contrast", 0.2, 0.1),  # mean spatial std of grey in [0, 1]
        ("brightness_change", 0.0, 0.05),  # std over time of the frame mean grey
        ("saturation", 0.3, 0.2),  # mean HSV saturation in [0, 1]
        ("saturation_std", 0.15, 0.1),  # mean spatial std of saturation
        ("warmth", 0.0, 0.15),  # mean (R - B) in [-1, 1]
        ("colourful_fraction", 0.5, 0.35),  # fraction of pixels with S, V above the colour minimums
        ("detail_log", -3.0, 1.0),  # log(mean |Laplacian| of grey / 255 + 1e-4)
        ("motion_mean_log1p", 0.5, 0.5),  # log1p(10 x mean optical-flow speed, frame long sides/s)
        ("motion_std_log1p", 0.3, 0.3),  # log1p(10 x std over sample pairs of that speed)
        ("motion_max_log1p", 0.8, 0.6),  # log1p(10 x max over sample pairs of that speed)
        ("frame_diff_log1p", 0.3, 0.3),  # log1p(10 x mean |grey difference| between samples)
        ("hist_change_mean", 0.1, 0.1),  # mean HSV-histogram distance between samples in [0, 1]
        ("cut_rate_log1p_per_s", 0.0, 1.0),  # log1p(cuts per second)
    ]
    spec += [(f"hue_{b:02d}", 0.0, 1.0) for b in range(s.hue_bins)]  # bins x share - 1 (0 = uniform)
    return spec


def audio_feature_names(settings: SignalSettings | None = None) -> list[str]:
    return [name for name, _, _ in _audio_spec(settings or SignalSettings())]


def video_feature_names(settings: SignalSettings | None = None) -> list[str]:
    return [name for name, _, _ in _video_spec(settings or SignalSettings())]


AUDIO_FEATURE_NAMES = audio_feature_names()
VIDEO_FEATURE_NAMES = video_feature_names()


def _standardise(raw: np.ndarray, spec: list[tuple[str, float, float]]) -> np.ndarray:
    centre = np.array([c for _, c, _ in spec], np.float64)
    scale = np.array([s for _, _, s in spec], np.float64)
    out = (np.asarray(raw, np.float64) - centre) / scale
    return np.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# Audio


@dataclass(frozen=True)
class AudioFeatures:
    features: np.ndarray  # (clips, Da) float32
    duration: float  # resampled samples / sample_rate
    clips: list[tuple[float, float]]  # [start, end) seconds


def audio_features(path: str | os.PathLike[str], settings: SignalSettings = SignalSettings(), *,
                   clip_duration: float = 2.0, clips_per_video: int = 3) -> AudioFeatures:
    """Per-clip audio features of `path`. Raises NoStreamError / MediaError with a one-line reason."""
    mono = decode_mono(path, settings)
    return waveform_features(mono, settings, clip_duration=clip_duration, clips_per_video=clips_per_video)


def decode_mono(path: str | os.PathLike[str], settings: SignalSettings = SignalSettings()) -> np.ndarray:
    """The mono mixdown of `path`'s audio at ``settings.sample_rate`` (float32), as the features see it."""
    import librosa

    from mvbind.pipeline.media.audio import decode_audio

    waveform, rate = decode_audio(path)
    channels = waveform.numpy()
    mono = channels[0].copy() if len(channels) == 1 else np.mean(channels, axis=0, dtype=np.float32)
    sr = settings.sample_rate
    if rate != sr:
        mono = librosa.resample(mono, orig_sr=rate, target_sr=sr, res_type="soxr_hq").astype(np.float32)
    if mono.size == 0:
        raise MediaError("audio stream is empty")
    if not np.isfinite(mono).all():
        raise MediaError("audio has non-finite samples")
    return mono


def waveform_features(y: np.ndarray, settings: SignalSettings = SignalSettings(), *,
                      clip_duration: float = 2.0, clips_per_video: int = 3) -> AudioFeatures:
    """Per-clip features of a mono float32 waveform at ``settings.sample_rate``.

    Each clip is analysed within its context window (``tempo_window`` seconds centred on it, kept
    inside the track), so memory stays bounded on long tracks and a clip's features depend only on
    the audio around it; clips sharing a window (short tracks) share one analysis.
    """
    y = np.ascontiguousarray(y, dtype=np.float32)
    spans = clip_spans(len(y) / settings.sample_rate, clip_duration, clips_per_video)
    return _span_features(y, settings, spans)


def window_features(y: np.ndarray, settings: SignalSettings = SignalSettings(), *, starts, clip_duration: float = 2.0
                    ) -> AudioFeatures:
    """Features of windows [start, start + clip_duration) of a mono waveform at ``settings.sample_rate``,
    each computed exactly as one clip of `waveform_features` (music-library windows)."""
    y = np.ascontiguousarray(y, dtype=np.float32)
    return _span_features(y, settings, [(float(a), float(a) + clip_duration) for a in starts])


def _span_features(y: np.ndarray, settings: SignalSettings, spans) -> AudioFeatures:
    s = settings
    sr = s.sample_rate
    duration = len(y) / sr
    frames_per_s = sr / s.hop_length
    spec = _audio_spec(s)
    analyses: dict[tuple[int, int], _Analysis] = {}
    rows = []
    for start, end in spans:
        start_s, end_s = float(start), min(float(end), duration)
        lo, hi = _context(start_s, end_s, duration, s.tempo_window)
        a, b = int(round(lo * sr)), max(int(round(hi * sr)), int(round(lo * sr)) + 1)
        if (a, b) not in analyses:
            analyses[(a, b)] = _analyse(y[a:b], s, with_tempo=duration >= s.min_tempo_window)
        an = analyses[(a, b)]
        offset = a / sr
        j0, j1 = _frame_range(start_s - offset, end_s - offset, frames_per_s, an.n_frames)
        seconds = max(end_s - start_s, 1.0 / frames_per_s)
        e = an.env[j0:j1]
        known = an.tempo > 0
        inside = an.beats[(an.beats >= j0) & (an.beats < j1)]
        beat_strength = float(an.env[inside].mean()) if len(inside) else 0.0
        clarity = beat_strength / float(e.mean()) if len(inside) and e.mean() > 0 else 0.0
        onset_rate = np.count_nonzero((an.onsets >= j0) & (an.onsets < j1)) / seconds
        r = an.rms_db[j0:j1]
        c = an.log_centroid[j0:j1]
        raw = [
            math.log2(an.tempo / 120.0) if known else 0.0,
            1.0 if known else 0.0,
            math.log1p(beat_strength),
            math.log(clarity) if clarity > 0 else 0.0,
            math.log1p(onset_rate),
            math.log1p(float(e.mean())),
            math.log1p(float(e.std())),
            float(r.mean()),
            float(r.std()),
            float(np.percentile(r, 95) - np.percentile(r, 5)),
            float(c.mean()),
            float(c.std()),
        ]
        raw += an.contrast[:, j0:j1].mean(axis=1).tolist()
        raw += an.mfcc[:, j0:j1].mean(axis=1).tolist()
        raw += an.mfcc[:, j0:j1].std(axis=1).tolist()
        raw += an.chroma[:, j0:j1].mean(axis=1).tolist()
        rows.append(_standardise(np.array(raw), spec))
    return AudioFeatures(np.stack(rows), duration, [(float(a), float(b)) for a, b in spans])


@dataclass
class _Analysis:
    """Frame-level features of one analysis window (frame j is centred at j * hop samples)."""

    n_frames: int
    env: np.ndarray  # onset strength
    onsets: np.ndarray  # onset frames
    tempo: float  # bpm; 0 = unknown
    beats: np.ndarray  # beat frames
    rms_db: np.ndarray
    log_centroid: np.ndarray  # log2(centroid / 1 kHz)
    contrast: np.ndarray  # (bands + 1, frames) dB
    mfcc: np.ndarray  # (n_mfcc, frames)
    chroma: np.ndarray  # (12, frames)


def _context(start: float, end: float, duration: float, window: float) -> tuple[float, float]:
    """The analysis window of clip [start, end): `window` seconds centred on it, inside [0, duration]."""
    width = max(window, end - start)
    if duration <= width:
        return 0.0, duration
    lo = min(max((start + end) / 2 - width / 2, 0.0), duration - width)
    return lo, lo + width


def _analyse(y: np.ndarray, s: SignalSettings, *, with_tempo: bool) -> _Analysis:
    import librosa

    sr, hop, n_fft = s.sample_rate, s.hop_length, s.n_fft
    if len(y) < n_fft:  # very short audio: zero-pad so there is at least one full window
        y = np.pad(y, (0, n_fft - len(y)))
    mag = np.abs(librosa.stft(y, n_fft=n_fft, hop_length=hop, center=True)).astype(np.float32)
    power = mag**2
    mel = librosa.feature.melspectrogram(S=power, sr=sr, n_fft=n_fft, hop_length=hop, n_mels=s.n_mels)
    mel_db = librosa.power_to_db(mel, ref=1.0, amin=1e-10, top_db=None)  # absolute dB (floor -100)
    n_frames = mag.shape[1]
    env = librosa.onset.onset_strength(S=mel_db, sr=sr, n_fft=n_fft, hop_length=hop)[:n_frames]
    onsets = librosa.onset.onset_detect(onset_envelope=env, sr=sr, hop_length=hop, units="frames")
    tempo, beats = 0.0, np.zeros(0, np.int64)
    if with_tempo and env.any() and n_frames >= 4:
        bpm, found = librosa.beat.beat_track(onset_envelope=env, sr=sr, hop_length=hop, start_bpm=120.0,
                                             trim=False)
        bpm = float(np.atleast_1d(bpm)[0])
        if bpm > 0 and len(found) >= 2:
            tempo, beats = bpm, np.asarray(found, dtype=np.int64)
    rms = librosa.feature.rms(S=mag, frame_length=n_fft, hop_length=hop)[0]
    centroid = librosa.feature.spectral_centroid(S=mag, sr=sr, n_fft=n_fft, hop_length=hop)[0]
    return _Analysis(
        n_frames=n_frames,
        env=env,
        onsets=np.asarray(onsets, dtype=np.int64),
        tempo=tempo,
        beats=beats,
        rms_db=20.0 * np.log10(np.maximum(rms, 1e-5)),
        log_centroid=np.log2(np.maximum(centroid, 20.0) / 1000.0),
        contrast=librosa.feature.spectral_contrast(S=mag, sr=sr, n_fft=n_fft, hop_length=hop,
                                                   fmin=s.contrast_fmin, n_bands=s.contrast_bands),
        mfcc=librosa.feature.mfcc(S=mel_db, n_mfcc=s.n_mfcc),
        chroma=librosa.feature.chroma_stft(S=power, sr=sr, n_fft=n_fft, hop_length=hop, tuning=0.0),
    )


def _frame_range(start: float, end: float, frames_per_s: float, n_frames: int) -> tuple[int, int]:
    """STFT frames whose centres lie in [start, end) (at least one)."""
    j0 = min(max(math.ceil(start * frames_per_s - 1e-9), 0), n_frames - 1)
    j1 = min(max(math.ceil(end * frames_per_s - 1e-9), j0 + 1), n_frames)
    return j0, j1


# ---------------------------------------------------------------------------------------------
# Video: selective, downscaled decoding

# Decoders known to honour AVCodecContext.skip_frame per packet (as in pipeline.video).
_SKIP_NONREF_CODECS = frozenset({"h264", "hevc", "mpeg1video", "mpeg2video", "mpeg4", "vp8", "vp9"})


@dataclass(frozen=True)
class VideoFeatures:
    features: np.ndarray  # (clips, Dv) float32
    duration: float  # frames / average fps (decord's definition, as pipeline.video)
    fps: float
    num_frames: int
    clips: list[tuple[float, float]]
    samples: list[list[int]]  # frame numbers sampled per clip


def video_features(path: str | os.PathLike[str], settings: SignalSettings = SignalSettings(), *,
                   clip_duration: float = 2.0, clips_per_video: int = 5) -> VideoFeatures:
    """Per-clip video features of `path`. Raises NoStreamError / MediaError with a one-line reason.

    Frames come from the one selective decoder (`mvbind.pipeline.media.video`), downscaled to
    `frame_size`; letterbox/pillarbox bars are found by the one border detector
    (`mvbind.pipeline.media.borders`) with `border_threshold` as its content threshold.
    """
    chosen: dict[str, list] = {}

    def choose(count: int, fps: float) -> list[int]:
        spans = clip_spans(count / fps, clip_duration, clips_per_video)
        plan = [clip_samples(a, b, fps, count, settings.frames_per_second) for a, b in spans]
        chosen.update(spans=spans, plan=plan)
        return [i for p in plan for i in p]

    video = decode_video(Path(path), choose, threads=1, max_side=settings.frame_size)
    frames, fps, spans, plan = video.frames, video.fps, chosen["spans"], chosen["plan"]
    if settings.remove_borders:
        box = detect_content_box(list(frames.values()), threshold=settings.border_threshold)
        frames = {i: crop(f, box) for i, f in frames.items()}
    spec = _video_spec(settings)
    rows = []
    for samples in plan:
        clip = [frames[i] for i in samples]
        dts = [(b - a) / fps for a, b in zip(samples, samples[1:])]
        rows.append(_standardise(_clip_video_raw(clip, dts, settings), spec))
    return VideoFeatures(np.stack(rows), video.count / fps, fps, video.count,
                         [(float(a), float(b)) for a, b in spans], [list(p) for p in plan])


def clip_samples(start: float, end: float, fps: float, count: int, per_second: float) -> list[int]:
    """Frame numbers sampled in clip [start, end): the clip's frames as decord/pytorchvideo pick them
    (ceil(fps·start) … min(ceil(fps·end), count) − 1), every fps/per_second-th one, plus the last."""
    first = math.ceil(fps * start)
    stop = min(math.ceil(fps * end), count)
    if stop <= first:
        first = min(first, count - 1)
        stop = first + 1
    step = max(fps / per_second, 1.0)
    picks = []
    k = 0
    while True:
        i = first + int(math.floor(k * step + 1e-9))
        if i >= stop:
            break
        picks.append(i)
        k += 1
    if picks[-1] != stop - 1:
        picks.append(stop - 1)
    return picks


def _clip_video_raw(clip: list[np.ndarray], dts: list[float], s: SignalSettings) -> np.ndarray:
    """Raw (untransformed-by-spec) video features of one clip's sampled RGB frames."""
    import cv2

    grey = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in clip]
    hsv = [cv2.cvtColor(f, cv2.COLOR_RGB2HSV) for f in clip]  # H in [0, 180), S and V in [0, 255]
    hists = [_hsv_hist(h) for h in hsv]
    flow_grey = [_shrink(g, s.flow_size) for g in grey]
    flow_side = float(max(flow_grey[0].shape[:2]))

    means = np.array([g.mean() for g in grey]) / 255.0
    contrast = float(np.mean([g.std() for g in grey])) / 255.0
    sat = np.stack([h[..., 1] for h in hsv]).astype(np.float32) / 255.0
    val = np.stack([h[..., 2] for h in hsv]).astype(np.float32) / 255.0
    hue = np.stack([h[..., 0] for h in hsv]).astype(np.int64)
    rgb = np.stack(clip).astype(np.float32) / 255.0
    warmth = float((rgb[..., 0] - rgb[..., 2]).mean())
    colourful = (sat >= s.colour_min_saturation) & (val >= s.colour_min_value)
    # Hue histogram over colourful pixels, weighted by saturation; bin 0 centred on red.
    width = 180.0 / s.hue_bins
    bins = (np.floor(((hue + width / 2) % 180) / width).astype(np.int64)) % s.hue_bins
    weights = np.where(colourful, sat, 0.0)
    hue_hist = np.bincount(bins.ravel(), weights=weights.ravel(), minlength=s.hue_bins)
    total = hue_hist.sum()
    hue_share = hue_hist / total * s.hue_bins - 1.0 if total > 0 else np.zeros(s.hue_bins)
    detail = float(np.mean([np.abs(cv2.Laplacian(g, cv2.CV_32F, ksize=1)).mean() for g in grey])) / 255.0

    changes, cuts, speeds, diffs = [], 0, [], []
    for k, dt in enumerate(dts):
        a, b = grey[k], grey[k + 1]
        change = 0.5 * float(np.abs(hists[k] - hists[k + 1]).sum())
        changes.append(change)
        diffs.append(float(cv2.absdiff(a, b).mean()) / 255.0)
        if change > s.cut_threshold:
            cuts += 1
            continue  # flow across a cut is meaningless
        flow = cv2.calcOpticalFlowFarneback(flow_grey[k], flow_grey[k + 1], None, pyr_scale=0.5, levels=3,
                                            winsize=9, iterations=2, poly_n=5, poly_sigma=1.1, flags=0)
        magnitude = float(np.sqrt((flow.astype(np.float64) ** 2).sum(axis=-1)).mean())
        speeds.append(magnitude / flow_side / max(dt, 1e-6))
    span = float(sum(dts))
    cut_rate = cuts / span if span > 0 else 0.0
    speeds_a = np.array(speeds) if speeds else np.zeros(1)

    raw = [
        float(means.mean()),
        contrast,
        float(means.std()),
        float(sat.mean()),
        float(sat.reshape(len(clip), -1).std(axis=1).mean()),
        warmth,
        float(colourful.mean()),
        math.log(detail + 1e-4),
        math.log1p(10.0 * float(speeds_a.mean())),
        math.log1p(10.0 * float(speeds_a.std())),
        math.log1p(10.0 * float(speeds_a.max())),
        math.log1p(10.0 * (float(np.mean(diffs)) if diffs else 0.0)),
        float(np.mean(changes)) if changes else 0.0,
        math.log1p(cut_rate),
    ]
    return np.concatenate([np.array(raw), hue_share])


def _shrink(grey: np.ndarray, size: int) -> np.ndarray:
    """`grey` with its long side reduced to `size` (area averaging; never upscaled)."""
    import cv2

    h, w = grey.shape
    scale = size / max(h, w)
    if scale >= 1.0:
        return grey
    return cv2.resize(grey, (max(8, int(round(w * scale))), max(8, int(round(h * scale)))),
                      interpolation=cv2.INTER_AREA)


def _hsv_hist(hsv: np.ndarray) -> np.ndarray:
    """Joint H(8) x S(4) x V(4) histogram, summing to 1."""
    import cv2

    hist = cv2.calcHist([hsv], [0, 1, 2], None, [8, 4, 4], [0, 180, 0, 256, 0, 256]).ravel()
    return hist / max(float(hist.sum()), 1.0)


# ---------------------------------------------------------------------------------------------
# Backend (pipeline.encoders contract)










