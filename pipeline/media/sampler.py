"""Clip timing: pytorchvideo's ConstantClipsPerVideoSampler, as ImageBind pins it.

Clip i of n starts at i * max(d - L, 0) / (n - 1) seconds (exact Fraction arithmetic on the
float duration d) and ends L seconds later, so the first clip starts at 0 and the last ends
exactly at d. For d <= L every clip is [0, L). (pytorchvideo release 0.1.5 divides by n
instead; ImageBind's pinned commit divides by n - 1, and so do we.)
"""

from fractions import Fraction


def clip_spans(duration: float, clip_duration: float, clips: int) -> list[tuple[Fraction, Fraction]]:
    """[start, end) of each clip, in seconds, as exact Fractions."""
    if clips < 1:
        raise ValueError(f"clips must be >= 1, got {clips}")
    length = Fraction(clip_duration)
    max_start = Fraction(max(duration - clip_duration, 0))
    step = Fraction(max_start, max(clips - 1, 1))
    return [(step * i, step * i + length) for i in range(clips)]
