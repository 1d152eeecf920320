"""The pretrained ImageBind checkpoint: where it lives, downloading it, loading it, its digest.

The official ``imagebind_huge.pth`` (all six modalities, about 4.5 GB) is a plain
``state_dict``. :func:`load_weights` loads only the audio + vision entries, strictly, into
:class:`~mvbind.pipeline.encoders.imagebind.model.ImageBindAV`; :func:`load_text_weights` only
the text entries into the separate text tower
(:class:`~mvbind.pipeline.encoders.imagebind.text.ImageBindText`). The file is memory-mapped, so
each reads just its own tensors' pages.

Verification of a download: upstream publishes no size or checksum for the file
(none could be found in its repository, issues or docs), so a download is checked
by (1) the bytes received against the server's Content-Length and (2) the file
opening as a torch state_dict; the exact keys and shapes are then checked strictly
by :func:`load_weights`. Set ``EXPECTED_SHA256`` to pin the exact file once it is
known; its digest is recorded in a ``.sha256`` sidecar either way and goes into the
extractor fingerprint.
"""
from __future__ import annotations

import hashlib
import http.client
import json
import os
import pickle
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from tqdm import tqdm

from mvbind.errors import MvbindError, reason
from mvbind.pipeline.config.paths import mvbind_home

if TYPE_CHECKING:
    from torch import nn

    from mvbind.pipeline.encoders.imagebind.model import ImageBindAV
    from mvbind.pipeline.encoders.imagebind.text import ImageBindText

OFFICIAL_URL = "https://dl.fbaipublicfiles.com/imagebind/imagebind_huge.pth"
WEIGHTS_FILENAME = "imagebind_huge.pth"
EXPECTED_SHA256: str | None = None  # not published upstream; fill in to pin the file
CONFIG_HINT = "set encoder.weights in pipeline.toml"

# Modalities of the full upstream model that the audio + vision model does not hold; their keys are
# dropped by load_weights (the text tower is a separate model: load_text_weights).
DROPPED_MODALITIES = ("text", "depth", "thermal", "imu")
_CHUNK = 1 << 20
_TIMEOUT_S = 60.0


def default_weights_path() -> Path:
    """``$MVBIND_HOME/imagebind_huge.pth`` (``~/.cache/mvbind`` when unset)."""
    return mvbind_home() / WEIGHTS_FILENAME


def resolve_weights(
    path: str | os.PathLike[str] | None,
    *,
    download: bool = True,
    progress: bool = True,
    url: str = OFFICIAL_URL,
) -> Path:
    """The checkpoint file to use, downloading it to the default location if needed.

    A configured ``path`` must exist (it is never downloaded to). ``None`` or "" means
    :func:`default_weights_path`; if that file is absent it is fetched from ``url``
    unless ``download`` is False. Every failure is a one-line :class:`MvbindError`.
    """
    if path is not None and str(path) != "":
        configured = Path(path).expanduser()
        if not configured.is_file():
            raise MvbindError(
                f"weights file {configured} does not exist: fix encoder.weights in pipeline.toml, "
                f"or leave it empty to download {WEIGHTS_FILENAME} to {default_weights_path()}"
            )
        return configured
    target = default_weights_path()
    if target.is_file():
        return target
    if not download:
        raise MvbindError(
            f"weights file {target} is missing and downloading is off: place {WEIGHTS_FILENAME} at {target} "
            f"(from {url}) or {CONFIG_HINT}"
        )
    download_weights(url, target, progress=progress)
    return target


def download_weights(url: str, dest: Path, *, progress: bool = True) -> Path:
    """Fetch ``url`` into ``dest.part``, verify it, then rename it to ``dest``.

    The sha256 is computed while downloading and stored in the sidecar, so the
    file is never hashed twice. Do the first download before fanning out many
    workers: concurrent downloads to the same destination share the ``.part`` name.
    """
    dest = Path(dest)
    part = dest.with_name(dest.name + ".part")
    manual = f"place {WEIGHTS_FILENAME} at {dest} or {CONFIG_HINT}"
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        out = open(part, "wb")
    except OSError as exc:
        raise MvbindError(f"cannot write {part} ({exc.strerror}): {manual}") from None
    digest = hashlib.sha256()
    received = 0
    with out:
        try:
            resp = urllib.request.urlopen(url, timeout=_TIMEOUT_S)
        except (OSError, http.client.HTTPException, ValueError) as exc:
            _remove(part)
            raise MvbindError(f"could not reach {url} ({_network_reason(exc)}): {manual}") from None
        length = resp.headers.get("Content-Length")
        total = int(length) if length and length.isdigit() else None
        with resp, tqdm(
            total=total, unit="B", unit_scale=True, unit_divisor=1024,
            desc=f"downloading {WEIGHTS_FILENAME}", disable=not progress,
        ) as bar:
            while True:
                try:
                    chunk = resp.read(_CHUNK)
                except (OSError, http.client.HTTPException) as exc:
                    _remove(part)
                    raise MvbindError(
                        f"download of {url} broke off after {received} bytes ({_network_reason(exc)}): "
                        f"retry, or {manual}"
                    ) from None
                if not chunk:
                    break
                try:
                    out.write(chunk)
                except OSError as exc:
                    _remove(part)
                    raise MvbindError(f"cannot write {part} ({exc.strerror}): {manual}") from None
                digest.update(chunk)
                received += len(chunk)
                bar.update(len(chunk))

    if total is not None and received != total:
        _remove(part)
        raise MvbindError(f"download of {url} was incomplete ({received} of {total} bytes): retry, or {manual}")
    sha = digest.hexdigest()
    if EXPECTED_SHA256 is not None and sha != EXPECTED_SHA256:
        _remove(part)
        raise MvbindError(f"download of {url} has sha256 {sha}, expected {EXPECTED_SHA256}: retry, or {manual}")
    try:
        _load_state(part)
    except MvbindError:
        _remove(part)
        raise MvbindError(f"download of {url} is not a torch checkpoint: {manual}") from None
    os.replace(part, dest)
    _write_sidecar(dest, sha)
    return dest


def audio_vision_state(state: Mapping[str, Any]) -> dict[str, Any]:
    """The entries of a full ImageBind state_dict that belong to the audio or vision encoder."""
    return {key: value for key, value in state.items() if _modality(key) not in DROPPED_MODALITIES}


def text_state(state: Mapping[str, Any]) -> dict[str, Any]:
    """The entries of a full ImageBind state_dict that belong to the text encoder."""
    return {key: value for key, value in state.items() if _modality(key) == "text"}


def load_weights(model: ImageBindAV, path: Path) -> None:
    """Load the audio + vision part of an ImageBind checkpoint into ``model`` (strict).

    The file is memory-mapped where its format allows. A model built on the
    ``meta`` device receives the loaded tensors themselves (``assign=True``).
    """
    path = Path(path)
    _load_strict(model, audio_vision_state(_load_state(path)), path, "the ImageBind audio+vision model")


def load_text_weights(model: ImageBindText, path: Path) -> None:
    """Load the text part of an ImageBind checkpoint into the text tower ``model`` (strict).

    Same file, same rules as :func:`load_weights`; the audio, vision and other entries are left
    unread in the memory map.
    """
    path = Path(path)
    _load_strict(model, text_state(_load_state(path)), path, "the ImageBind text tower")


def _modality(key: str) -> str | None:
    """The modality an upstream key belongs to, its second part: modality_trunks.text.blocks.0... -> text."""
    parts = key.split(".", 2)
    return parts[1] if len(parts) > 1 else None


def _load_strict(model: nn.Module, state: Mapping[str, Any], path: Path, what: str) -> None:
    """``load_state_dict(strict=True)`` after checking keys and shapes, every failure one line."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        bits = []
        if missing:
            bits.append(f"{len(missing)} missing keys, e.g. {missing[0]}")
        if unexpected:
            bits.append(f"{len(unexpected)} unexpected keys, e.g. {unexpected[0]}")
        raise MvbindError(
            f"weights file {path} does not fit {what} ({'; '.join(bits)}): "
            f"use the official {WEIGHTS_FILENAME} or {CONFIG_HINT}"
        )
    for key, ref in expected.items():
        if tuple(state[key].shape) != tuple(ref.shape):
            raise MvbindError(
                f"weights file {path} does not fit the model: {key} has shape {tuple(state[key].shape)}, "
                f"expected {tuple(ref.shape)} (wrong encoder.arch?)"
            )
    assign = any(t.is_meta for t in expected.values())
    try:
        model.load_state_dict(state, strict=True, assign=assign)
    except RuntimeError as exc:
        raise MvbindError(f"weights file {path} could not be loaded: {reason(exc, 300)}") from None


def file_digest(path: Path) -> str:
    """sha256 of a file, cached in ``<file>.sha256`` keyed by its size and mtime."""
    path = Path(path)
    try:
        st = path.stat()
    except OSError as exc:
        raise MvbindError(f"cannot read {path} to checksum it ({exc.strerror})") from None
    sidecar = _sidecar(path)
    try:
        cached = json.loads(sidecar.read_text())
        if cached.get("size") == st.st_size and cached.get("mtime_ns") == st.st_mtime_ns:
            return str(cached["sha256"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            while chunk := f.read(_CHUNK):
                digest.update(chunk)
    except OSError as exc:
        raise MvbindError(f"cannot read {path} to checksum it ({exc.strerror})") from None
    sha = digest.hexdigest()
    _write_sidecar(path, sha, st)
    return sha


# ---------------------------------------------------------------------------- helpers


def _load_state(path: Path) -> Mapping[str, Any]:
    """torch.load a state_dict (mmap when possible); any failure names the file."""
    if not path.is_file():
        raise MvbindError(f"weights file {path} does not exist: {CONFIG_HINT}")
    try:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as exc:
            if "mmap" not in str(exc):  # legacy (non-zip) format cannot be memory-mapped
                raise
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - unpickling can fail in many ways; all mean "not a checkpoint"
        if isinstance(exc, pickle.UnpicklingError):  # torch's text here advises weights_only=False: not for us
            why = "not a pickle of tensors"
        else:
            first = reason(exc, 1000).split(". ")[0][:100]
            why = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
        raise MvbindError(
            f"weights file {path} is not a readable torch checkpoint ({why}): "
            f"re-download {WEIGHTS_FILENAME} or {CONFIG_HINT}"
        ) from None
    for wrapper in ("state_dict", "model"):
        if isinstance(obj, Mapping) and isinstance(obj.get(wrapper), Mapping):
            obj = obj[wrapper]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise MvbindError(f"weights file {path} does not hold a state_dict of tensors: {CONFIG_HINT}")
    return obj


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _write_sidecar(path: Path, sha: str, st: os.stat_result | None = None) -> None:
    """Record the digest next to the file (best effort: a read-only directory just means no cache)."""
    try:
        st = st or path.stat()
        sidecar = _sidecar(path)
        tmp = sidecar.with_name(f"{sidecar.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"sha256": sha, "size": st.st_size, "mtime_ns": st.st_mtime_ns}) + "\n")
        os.replace(tmp, sidecar)
    except OSError:
        pass


def _remove(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass


def _network_reason(exc: BaseException) -> str:
    """A short one-line reason for a network error."""
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    why = getattr(exc, "reason", None)
    return reason(why) if isinstance(why, BaseException) else " ".join(str(why or exc).split()) or type(exc).__name__
