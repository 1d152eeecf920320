"""Where a library file lives: a plain name inside library.dir, or an explicit path."""

from __future__ import annotations

import re
from pathlib import Path

from mvbind.pipeline.config import Config, expand_path
from mvbind.pipeline.config.paths import PLAIN_NAME
from mvbind.pipeline.library.store import SUFFIX, LibraryError


def library_path(config: Config, out: str | Path | None, name: str | None, source: str | Path) -> Path:
    """Where `index` writes: `out` (an explicit path), else <library.dir>/NAME.mvlib.h5.

    A name is a plain name that stays inside library.dir: `../x`, `/tmp/x` or `a/b` are refused
    (use --out for a path). Without a name, SOURCE's name is made into one.
    """
    if out:
        return Path(out)
    base = expand_path(config.library.dir)
    if name is not None:
        if not PLAIN_NAME.match(name) or name.endswith(SUFFIX):
            raise LibraryError(f"--name {name!r}: a library name is a plain name (letters, digits, '.', '_', '+', "
                               f"'-', starting with a letter or digit) inside {base}; to write elsewhere pass "
                               "--out PATH")
        return base / f"{name}{SUFFIX}"
    src = Path(source)
    stem = src.name if src.is_dir() else src.stem
    if not src.is_dir() and stem.lower() == "manifest":  # library/manifest.csv -> "library"
        stem = src.resolve().parent.name
    stem = re.sub(r"[^A-Za-z0-9._+-]+", "-", stem).strip(".-") or "library"
    return base / f"{stem}{SUFFIX}"


def resolve_library(config: Config, value: str | Path) -> Path:
    """A name in library.dir (NAME.mvlib.h5), else a library file path.

    A name wins over a same-named file or folder in the working directory; a folder is never a
    library, so an existing folder called like the library is skipped rather than opened.
    """
    path = Path(value)
    base = expand_path(config.library.dir)
    for candidate in (base / f"{value}{SUFFIX}", base / str(value), path):
        if candidate.is_file():
            return candidate
    if path.exists():
        return path  # let the reader say what is wrong with it (a folder, not a library file, ...)
    raise LibraryError(f"library {str(value)!r} not found (no file {path}, none named {value}{SUFFIX} in {base}); "
                       "build it with `mvbind index MUSIC_FOLDER --name NAME`")
