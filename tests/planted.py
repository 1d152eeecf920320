"""A synthetic cache with planted cross-modal structure (tests, benchmarks, demos).

Each track has latent factors t; each video that uses it has latent factors t + jitter.
Audio clips are A(t) + noise and video clips are V(video latent) + noise, where A and V are
two different fixed random nonlinear maps (tanh MLPs), so the pairing is learnable but raw
cosine between the two spaces is near chance. Shapes and scales mimic ImageBind: audio clips
have norm ~20, video clips norm 1. With `nuisance` > 0 each side's map also takes that many
modality-only latent factors (per track for audio, per video for video) that the other side
never sees: structure a projector must learn to ignore, as real encoders carry. Videos sharing
a track get the very same audio (and, for some, a manifest music_id); some items have no audio.
Everything comes from one seed.
"""

from __future__ import annotations

import hashlib

import numpy as np

from mvbind.cache import FeatureCache, Namespace, Row


def _map(rng: np.random.Generator, latent: int, dim: int, hidden: int = 256):
    w1 = rng.standard_normal((latent, hidden)).astype(np.float32) / np.sqrt(latent)
    b1 = rng.standard_normal(hidden).astype(np.float32) * 0.5
    w2 = rng.standard_normal((hidden, dim)).astype(np.float32) / np.sqrt(hidden)
    return lambda z: np.tanh(z @ w1 + b1) @ w2


def planted_arrays(n: int, *, audio_shape=(3, 64), video_shape=(15, 64), latent: int = 16, noise: float = 0.5,
                   jitter: float = 0.3, shared_fraction: float = 0.0, tracks_per_shared: int = 3,
                   music_id_fraction: float = 0.5, no_audio: int = 0, nuisance: int = 0, seed: int = 0) -> dict:
    """Arrays for n items: keys, audio (n, ca, da) fp16 or masked, video, music_ids, track of each item."""
    rng = np.random.default_rng(seed)
    maps = np.random.default_rng(seed + 10_000)
    f_a = _map(maps, latent + nuisance, audio_shape[1])
    f_v = _map(maps, latent + nuisance, video_shape[1])
    # tracks: items in the shared fraction reuse a track in groups of `tracks_per_shared`
    n_shared = int(round(n * shared_fraction)) // tracks_per_shared * tracks_per_shared
    track = np.concatenate([np.repeat(np.arange(n_shared // tracks_per_shared), tracks_per_shared),
                            np.arange(n_shared // tracks_per_shared, n_shared // tracks_per_shared + n - n_shared)])
    track = track[rng.permutation(n)]
    n_tracks = int(track.max()) + 1 if n else 0
    t_latent = rng.standard_normal((n_tracks, latent)).astype(np.float32)
    v_latent = t_latent[track] + jitter * rng.standard_normal((n, latent)).astype(np.float32)
    bank = rng.standard_normal((4096, max(audio_shape[1], video_shape[1]))).astype(np.float32)

    def clips(base: np.ndarray, count: int, dim: int, scale: float, per_row_seed: np.ndarray) -> np.ndarray:
        base = base / np.linalg.norm(base, axis=1, keepdims=True)
        pick = (per_row_seed[:, None] * 7919 + np.arange(count)[None, :] * 104729) % len(bank)
        x = base[:, None, :] + noise * bank[pick, :dim] / np.sqrt(dim)
        x = x / np.linalg.norm(x, axis=2, keepdims=True) * scale
        return x.astype(np.float16)

    if nuisance:  # drawn from their own generator, so nuisance=0 leaves every other draw as it was
        private = np.random.default_rng(seed + 20_000)
        t_latent = np.concatenate([t_latent, private.standard_normal((n_tracks, nuisance), np.float32)], axis=1)
        v_latent = np.concatenate([v_latent, private.standard_normal((n, nuisance), np.float32)], axis=1)
    audio = clips(f_a(t_latent), audio_shape[0], audio_shape[1], 20.0, np.arange(n_tracks))[track]
    video = clips(f_v(v_latent), video_shape[0], video_shape[1], 1.0, rng.integers(0, 1 << 30, n))
    counts = np.bincount(track, minlength=n_tracks)
    labelled = rng.random(n_tracks) < music_id_fraction
    music_ids = np.array([f"track-{k}" if counts[k] > 1 and labelled[k] else "" for k in track], dtype=object)
    has_audio = np.ones(n, bool)
    has_audio[rng.choice(n, size=min(no_audio, n), replace=False)] = False
    keys = np.array([hashlib.sha256(f"planted-{seed}-{i}".encode()).hexdigest()[:32] for i in range(n)], dtype=object)
    return {"keys": keys, "audio": audio, "video": video, "music_ids": music_ids, "track": track,
            "has_audio": has_audio}


def write_planted(cache_root, n: int, *, shard_size: int = 4096, splits: np.ndarray | None = None,
                  settings_extra: dict | None = None, **kwargs) -> Namespace:
    """Write a planted namespace into `cache_root` (settings: shapes + a 'planted' marker)."""
    audio_shape = tuple(kwargs.get("audio_shape", (3, 64)))
    video_shape = tuple(kwargs.get("video_shape", (15, 64)))
    data = planted_arrays(n, **kwargs)
    settings = {"encoder": "planted", "seed": kwargs.get("seed", 0), "n": n,
                "shapes": {"audio": list(audio_shape), "video": list(video_shape)}, **(settings_extra or {})}
    ns = FeatureCache(cache_root).create(settings)
    for s in range(0, n, shard_size):
        rows = [Row(key=str(data["keys"][i]), path=f"/nonexistent/video-{i}.mp4",
                    audio=data["audio"][i] if data["has_audio"][i] else None, video=data["video"][i],
                    duration=15.0, id=f"v{i}", music_id=str(data["music_ids"][i]),
                    split="" if splits is None else str(splits[i]))
                for i in range(s, min(n, s + shard_size))]
        ns.write_shard(rows)
    return ns
