"""Where data lives: ${MVBIND_HOME} (default ~/.cache/mvbind) and the expansion of configured paths."""

from __future__ import annotations

import os
import re
from pathlib import Path

# A name that becomes a file or folder name (a run, an eval report, a library): it stays inside its
# folder (no separators, no leading dot, never "." or "..").
PLAIN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")


def mvbind_home() -> Path:
    """Where data lives by default: $MVBIND_HOME, else ~/.cache/mvbind (outside the source tree)."""
    return Path(os.environ.get("MVBIND_HOME") or Path.home() / ".cache" / "mvbind")


def expand_path(value: str) -> Path:
    """Expand ${MVBIND_HOME}, other environment variables and ~ in a configured path."""
    env = dict(os.environ)
    env.setdefault("MVBIND_HOME", str(mvbind_home()))
    return Path(os.path.expanduser(_expand(value, env)))


def _expand(value: str, env: dict[str, str]) -> str:
    for name, val in env.items():
        value = value.replace("${" + name + "}", val)
    return value
