"""Steering recommendations with words, zero-shot, through ImageBind's text tower.

ImageBind binds text to the same space as audio (through images), so a prompt ("calm piano") can be
compared with a library's raw ImageBind window embeddings without labels or retraining. The run's
projected space knows nothing about text, so the two scores live in different spaces with different
spreads; the rule that mixes them is, per query, over all of the library's windows w:

    video score   v(w) = cos(projected video, projected window)         (what unsteered search ranks by)
    text score    s(w) = cos(ImageBind text embedding, raw window embedding)
    steered score c(w) = (1 - λ) · z(v)(w) + λ · z(s)(w),   z(x) = (x - mean(x)) / std(x) over the windows

λ = `recommend.text_weight` (--text-weight). Standardising puts both on one scale (a text cosine of
0.2 may be high while a video cosine of 0.5 is ordinary), and it is an increasing affine map per
query, so λ = 0 ranks exactly as unsteered search and λ = 1 ranks by the text alone. A track's score
is its best window's c(w) and the suggested start is that window's. Without a video (text alone),
tracks are ranked by s(w) itself (a plain zero-shot text→music search; scores are raw cosines).
"""

from __future__ import annotations

import threading
from collections import OrderedDict

import numpy as np

from mvbind.errors import MvbindError
from mvbind.pipeline.config import Config


def standardise(x: np.ndarray) -> np.ndarray:
    """(x - mean) / std over the last axis; a constant row becomes zeros."""
    x = np.asarray(x, np.float64)
    mean = x.mean(axis=-1, keepdims=True)
    std = x.std(axis=-1, keepdims=True)
    return ((x - mean) / np.where(std > 1e-12, std, 1.0)).astype(np.float32)


def combine(video: np.ndarray | None, text: np.ndarray, weight: float) -> np.ndarray:
    """The steered window scores (module docstring): text alone when `video` is None."""
    if video is None:
        return np.asarray(text, np.float32)
    if not 0.0 <= weight <= 1.0:
        raise MvbindError(f"recommend.text_weight {weight}: must be in [0, 1] (0 = the video only, 1 = the text only)")
    return ((1.0 - weight) * standardise(video) + weight * standardise(text)).astype(np.float32)


def best_windows(scores: np.ndarray, offsets: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Top-k tracks by their best window: (tracks, scores, global window indices), best first; ties keep order."""
    n_tracks = len(offsets) - 1
    k = min(k, n_tracks)
    best = np.maximum.reduceat(scores, offsets[:-1])
    top = np.argsort(-best, kind="stable")[:k]
    windows = np.array([offsets[t] + int(np.argmax(scores[offsets[t]:offsets[t + 1]])) for t in top], np.int64)
    return top.astype(np.int64), best[top].astype(np.float32), windows


class TextEncoder:
    """ImageBind's text tower for the configured encoder (built or loaded on first use, shared, thread-safe).

    Only a text query builds it: the audio + vision path never imports the text modules. Prompts are
    embedded once each (a small LRU), L2-normalised."""

    def __init__(self, config: Config, *, progress: bool = False, cache_size: int = 256):
        self.config = config
        self.progress = progress
        self._model = None
        self._lock = threading.Lock()
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._cache_size = cache_size

    def _build(self):
        enc = self.config.encoder
        if enc.name != "imagebind":
            raise MvbindError(f"text steering needs the ImageBind encoder; encoder.name is {enc.name!r}")
        from mvbind.pipeline.encoders.imagebind.text import build_text_tower, load_text_tower, text_config

        if enc.weights == "random":
            try:
                text_config(enc.arch)
            except (KeyError, ValueError):
                raise MvbindError(f"encoder.arch {enc.arch!r} has no text tower; use huge or tiny") from None
            model = build_text_tower(enc.arch, seed=enc.seed)
        else:
            model = load_text_tower(enc.weights or None, progress=self.progress)
        return model.eval()

    def embed(self, text: str) -> np.ndarray:
        """The prompt's L2-normalised ImageBind text embedding (D,) float32."""
        import torch

        text = " ".join(str(text).split())
        if not text:
            raise MvbindError("--text is empty; give a few words, e.g. --text \"calm piano\"")
        with self._lock:
            if text in self._cache:
                self._cache.move_to_end(text)
                return self._cache[text]
            if self._model is None:
                self._model = self._build()
            with torch.no_grad():
                vec = self._model.embed_text([text], postprocess=False)[0].float().numpy()
            vec = (vec / max(float(np.linalg.norm(vec)), 1e-12)).astype(np.float32)
            self._cache[text] = vec
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
            return vec
