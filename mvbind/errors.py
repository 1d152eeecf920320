"""Errors that carry a one-line, user-facing reason."""

import re


class MvbindError(Exception):
    """Base class: str(err) is a one-line message that names the file or setting and the fix."""


class ConfigError(MvbindError):
    """A setting in pipeline.toml or on the command line is invalid."""


class MediaError(MvbindError):
    """One media file cannot be used (corrupt, no stream, unreadable); the run goes on."""


class NoStreamError(MediaError):
    """The file has no stream of the requested kind (e.g. a video without audio)."""


def reason(err: BaseException, limit: int = 160) -> str:
    """A short one-line reason from an exception, for one-line errors and the failure log.

    OSError gives its strerror (no path: the caller's message or the log names the file); anything
    else its message with whitespace collapsed; cut at `limit` characters.
    """
    text = getattr(err, "strerror", None) or str(err) or type(err).__name__
    return " ".join(str(text).split())[:limit]


def open_reason(err: OSError) -> str:
    """Why a file could not be opened for reading, in words a user can act on."""
    if isinstance(err, FileNotFoundError):
        return "file not found (no such file at that path)"
    if isinstance(err, IsADirectoryError):
        return "is a directory, not a media file"
    return f"unreadable ({err.strerror or err})"


def errno_of(err: BaseException) -> int | None:
    """The errno of an OS-level failure: OSError's own, or the `errno = N` h5py writes into the text
    of the RuntimeError it raises (e.g. a full disk while flushing a file); None otherwise."""
    code = getattr(err, "errno", None)
    if code is None and isinstance(err, RuntimeError):
        found = re.search(r"errno = (\d+)", str(err))
        code = int(found.group(1)) if found else None
    return code
