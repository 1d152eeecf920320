"""Uploaded and already-extracted videos the server may play: an id → server-side file registry.

A client names a video only by an id this module handed out (an upload's random id, or a content
key the feature cache holds). No path or file name from a client is ever opened: an upload is
streamed to ``<server temp dir>/<random hex><extension from probing>``, size-capped while it
streams, and kept only until `keep` newer uploads push it out.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import tempfile
import threading
import unicodedata
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
UPLOAD_PREFIX = "upload-"

# Container (PyAV's format name) → an extension ffmpeg can write a preview into with the picture copied.
_EXTENSIONS = {"mov": ".mp4", "mp4": ".mp4", "matroska": ".mkv", "webm": ".webm", "avi": ".avi", "ogg": ".ogv",
               "flv": ".flv", "mpegts": ".ts", "mpeg": ".mpg"}


class UploadRejected(Exception):
    """An upload the server will not take: `status` is the HTTP status, the message one line for the person."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


@dataclass
class Video:
    id: str
    path: Path  # the server's file; never shown to a client
    name: str  # what to show: an upload's cleaned client file name, an indexed video's base name
    kind: str  # "upload" | "indexed"
    duration: float = 0.0
    key: str = ""  # content key, once known


def display_name(name: str | None, fallback: str = "video") -> str:
    """A client's file name made safe to show: base name only, printable, at most 80 characters."""
    name = (name or "").replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(c for c in unicodedata.normalize("NFC", name) if c.isprintable()).strip()
    return name[:80] or fallback


def probe_video(path: Path) -> tuple[str, float]:
    """(extension to keep the file under, duration s) if the file is a video ffmpeg can read; else UploadRejected."""
    import av

    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                kinds = "audio only" if container.streams.audio else "no audio or video streams"
                raise UploadRejected(415, f"the file has no video stream ({kinds}); upload a video")
            fmt = container.format.name.split(",")[0]
            duration = float(container.duration or 0) / 1e6
    except UploadRejected:
        raise
    except Exception:  # noqa: BLE001 - PyAV raises many error types for unreadable input
        raise UploadRejected(415, "the file is not a video ffmpeg can read; upload an mp4, mov, webm or mkv") from None
    return _EXTENSIONS.get(fmt, ".mkv"), duration


class VideoRegistry:
    """Thread-safe id → `Video`; owns the server's temporary folder (uploads, previews)."""

    def __init__(self, keep: int = 32, root: str | Path | None = None):
        self.keep = keep
        self.root = Path(tempfile.mkdtemp(prefix="mvbind-serve-", dir=root))
        self.uploads = self.root / "uploads"
        self.previews = self.root / "previews"
        self.uploads.mkdir()
        self.previews.mkdir()
        self._lock = threading.Lock()
        self._uploads: OrderedDict[str, Video] = OrderedDict()
        self._indexed: dict[str, Video] = {}
        self._pins: dict[str, int] = {}  # uploads a request is using: evicted ones are deleted when released
        self._evicted: dict[str, Path] = {}

    def new_upload_path(self) -> tuple[str, Path]:
        """A fresh upload id and the temporary file to stream it into."""
        vid = UPLOAD_PREFIX + secrets.token_hex(12)
        return vid, self.uploads / f".part-{vid}"

    def add_upload(self, vid: str, part: Path, name: str) -> Video:
        """Probe a fully received upload and register it (or delete it and raise UploadRejected)."""
        try:
            if part.stat().st_size == 0:
                raise UploadRejected(400, "the upload is empty (0 bytes); choose a video file")
            ext, duration = probe_video(part)
        except BaseException:
            part.unlink(missing_ok=True)
            raise
        final = self.uploads / f"{vid}{ext}"
        os.replace(part, final)
        video = Video(vid, final, display_name(name), "upload", duration)
        with self._lock:
            self._uploads[vid] = video
            self._pins[vid] = self._pins.get(vid, 0) + 1  # the uploading request uses it: release() when done
            while len(self._uploads) > self.keep:
                old_id, old = self._uploads.popitem(last=False)
                if self._pins.get(old_id):
                    self._evicted[old_id] = old.path
                else:
                    old.path.unlink(missing_ok=True)
        return video

    def pin(self, vid: str) -> Video | None:
        """The video, kept on disk until `release(vid)` even if newer uploads evict it meanwhile."""
        video = self.get(vid)
        if video is not None:
            with self._lock:
                self._pins[vid] = self._pins.get(vid, 0) + 1
        return video

    def release(self, vid: str) -> None:
        with self._lock:
            n = self._pins.get(vid, 0) - 1
            if n > 0:
                self._pins[vid] = n
                return
            self._pins.pop(vid, None)
            path = self._evicted.pop(vid, None)
        if path is not None:
            path.unlink(missing_ok=True)

    def set_indexed(self, videos: list[Video]) -> None:
        with self._lock:
            self._indexed = {v.id: v for v in videos}

    def indexed(self) -> list[Video]:
        with self._lock:
            return list(self._indexed.values())

    def get(self, vid: str) -> Video | None:
        if not ID_RE.match(vid):
            return None
        with self._lock:
            video = self._uploads.get(vid) or self._indexed.get(vid)
        return video if video is not None and video.path.is_file() else None

    def close(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
