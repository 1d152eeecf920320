"""Errors that carry a one-line, user-facing reason."""


class MvbindError(Exception):
    """Base class: str(err) is a one-line message that names the file or setting and the fix."""


class ConfigError(MvbindError):
    """A setting in pipeline.toml or on the command line is invalid."""


class MediaError(MvbindError):
    """One media file cannot be used (corrupt, no stream, unreadable); the run goes on."""


class NoStreamError(MediaError):
    """The file has no stream of the requested kind (e.g. a video without audio)."""
