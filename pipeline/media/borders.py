"""MVBind's black-border removal: find the content box of a letterboxed/pillarboxed video.

Several frames sampled across the video are examined together:

1. A frame whose grey-level histogram is narrow (p99 - p1 below ``blank_spread``) is blank (a black
   fade-in frame, a solid flash) and tells nothing about borders: it is skipped.
2. Each other frame is thresholded (grey > ``threshold`` is content); a row/column is content when
   more than ``noise_frac`` of its pixels are (so isolated compression noise in a bar does not
   count). The content rows/columns of all frames are united, and their extent is the candidate box.
3. Each border strip outside the box must be uniform over all frames: a real bar is flat black, so
   its grey-level spread (standard deviation) stays below ``max_border_std``; a strip with texture
   is a dark part of the scene and that side is not cropped.
4. Guards: borders thinner than ``min_border`` pixels are ignored, and a box smaller than
   ``min_content`` of the frame's width or height (or no usable frame at all) keeps the full frame.

Pure numpy; frames are uint8 RGB arrays of shape (H, W, 3), all of the same size.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

Box = tuple[int, int, int, int]

# Pixels next to the content edge often carry ringing/chroma bleed; they are left out of the
# uniformity check of a border strip (but still cropped).
_EDGE_MARGIN = 2


def luma(frame: np.ndarray) -> np.ndarray:
    """BT.601 grey level of a uint8 RGB frame, as uint8 (integer arithmetic, fast)."""
    rgb = frame.astype(np.uint16)
    grey = rgb[..., 0] * 77 + rgb[..., 1] * 150 + rgb[..., 2] * 29 + 128
    return (grey >> 8).astype(np.uint8)


def detect_content_box(
    frames: Sequence[np.ndarray],
    *,
    threshold: int = 16,
    noise_frac: float = 0.005,
    blank_spread: int = 12,
    max_border_std: float = 6.0,
    min_border: int = 3,
    min_content: float = 0.2,
) -> Box:
    """Content box (x0, y0, x1, y1), end-exclusive, shared by all `frames`; the full frame if none."""
    if not frames:
        raise ValueError("detect_content_box needs at least one frame")
    height, width = frames[0].shape[:2]
    full: Box = (0, 0, width, height)
    greys = [luma(f) for f in frames]
    if any(g.shape != (height, width) for g in greys):
        raise ValueError("all frames must have the same size")

    used: list[np.ndarray] = []
    rows = np.zeros(height, dtype=bool)
    cols = np.zeros(width, dtype=bool)
    for grey in greys:
        if _spread(grey) < blank_spread:
            continue  # blank frame: black (fade-in) or one flat colour
        mask = grey > threshold
        rows |= mask.sum(axis=1) > max(1, noise_frac * width)
        cols |= mask.sum(axis=0) > max(1, noise_frac * height)
        used.append(grey)
    if not used or not rows.any() or not cols.any():
        return full

    y0, y1 = _extent(rows)
    x0, x1 = _extent(cols)
    # A side is cropped only when its strip is a real border: wide enough and flat over all frames.
    if y0 < min_border or not _uniform(used, np.s_[: max(y0 - _EDGE_MARGIN, 1), :], max_border_std):
        y0 = 0
    if height - y1 < min_border or not _uniform(used, np.s_[min(y1 + _EDGE_MARGIN, height - 1) :, :], max_border_std):
        y1 = height
    if x0 < min_border or not _uniform(used, np.s_[:, : max(x0 - _EDGE_MARGIN, 1)], max_border_std):
        x0 = 0
    if width - x1 < min_border or not _uniform(used, np.s_[:, min(x1 + _EDGE_MARGIN, width - 1) :], max_border_std):
        x1 = width

    if (x1 - x0) < min_content * width or (y1 - y0) < min_content * height:
        return full
    return (int(x0), int(y0), int(x1), int(y1))


def crop(frame: np.ndarray, box: Box) -> np.ndarray:
    """The part of an (H, W, ...) frame inside `box` (a view, no copy)."""
    x0, y0, x1, y1 = box
    return frame[y0:y1, x0:x1]


def _extent(flags: np.ndarray) -> tuple[int, int]:
    """[first, last + 1) of the True entries."""
    idx = np.flatnonzero(flags)
    return int(idx[0]), int(idx[-1]) + 1


def _histogram(grey: np.ndarray) -> np.ndarray:
    return np.bincount(grey.ravel(), minlength=256)


def _spread(grey: np.ndarray) -> int:
    """Width of the grey-level histogram: 99th minus 1st percentile."""
    cdf = np.cumsum(_histogram(grey))
    total = cdf[-1]
    return int(np.searchsorted(cdf, 0.99 * total) - np.searchsorted(cdf, 0.01 * total))


def _uniform(greys: list[np.ndarray], strip: tuple[slice, slice], max_std: float) -> bool:
    """Whether the strip is flat (small grey-level standard deviation) across all frames."""
    hist = sum(_histogram(np.ascontiguousarray(g[strip])) for g in greys).astype(np.float64)
    total = hist.sum()
    if total == 0:
        return False
    levels = np.arange(256, dtype=np.float64)
    mean = (hist * levels).sum() / total
    var = (hist * (levels - mean) ** 2).sum() / total
    return float(np.sqrt(var)) <= max_std
