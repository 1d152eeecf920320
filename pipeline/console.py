"""Notices for the user on stderr (stdout carries only results), safe beside tqdm bars."""

from __future__ import annotations

import sys

from tqdm import tqdm


def say(message: str) -> None:
    """A notice for the user, on stderr (stdout carries only results)."""
    tqdm.write(message, file=sys.stderr)
