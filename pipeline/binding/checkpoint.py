"""Projector checkpoints: plain tensors and primitives only, so `torch.load(weights_only=True)` reads them.

best.pt holds the weights of the best validation epoch; last.pt those of the latest epoch plus the
training state a resumed run continues from (`binding.resume`). Both load with `load_checkpoint`.

A checkpoint records the cache fingerprint it was trained on and the `ProjectorSpec` that
shapes the model. Loading refuses, in one line, a checkpoint from another fingerprint, one
whose input sizes differ from the cache's, or one whose tensors don't fit its spec.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

import torch

from mvbind.errors import MvbindError
from mvbind.pipeline.binding.projector import BindingModel, ProjectorSpec

FORMAT = "mvbind-binding-projector"
VERSION = 1


class CheckpointError(MvbindError):
    """A checkpoint can't be used here."""


def save_checkpoint(path: Path, model: BindingModel, *, fingerprint: str, epoch: int, metrics: dict,
                    training: dict | None = None) -> None:
    """Write atomically (temp file, fsync, rename): a kill leaves the previous file or the new one, whole.

    `training` (last.pt only) is the state a resumed run continues from (`binding.resume`).
    """
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    ck = {"format": FORMAT, "version": VERSION, "fingerprint": fingerprint, "spec": model.spec.to_dict(),
          "epoch": int(epoch), "metrics": metrics, "state_dict": state}
    if training is not None:
        ck["training"] = training
    _write_atomic(Path(path), lambda f: torch.save(ck, f))


def copy_atomic(src: Path, dst: Path) -> None:
    """Copy a checkpoint file as `save_checkpoint` writes one: a kill leaves the old `dst` or the new one."""
    with open(src, "rb") as f:
        _write_atomic(Path(dst), lambda g: shutil.copyfileobj(f, g))


def _write_atomic(path: Path, write) -> None:
    """`write(file)` into a temp file beside `path`, fsync, then rename it over `path`."""
    tmp = path.with_name(f".tmp-{uuid.uuid4().hex[:8]}-{path.name}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def read_checkpoint(path: Path) -> dict:
    """The checkpoint's contents, read weights-only; refuses another format or version in one line."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found; train a run first (`mvbind train`)")
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - unpickling errors come in many types
        text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"{path}: not a loadable weights-only checkpoint ({text[:200]})") from None
    if not isinstance(ck, dict) or ck.get("format") != FORMAT:
        found = ck.get("format") if isinstance(ck, dict) else type(ck).__name__
        raise CheckpointError(f"{path}: not an mvbind projector checkpoint (format {found!r})")
    if ck.get("version") != VERSION:
        raise CheckpointError(f"{path}: checkpoint version {ck.get('version')}, this mvbind reads version {VERSION}; "
                              "retrain")
    return ck


def load_checkpoint(path: Path, *, fingerprint: str | None = None, audio_shape: tuple[int, int] | None = None,
                    video_shape: tuple[int, int] | None = None,
                    spec: ProjectorSpec | None = None) -> tuple[BindingModel, dict]:
    """The model (eval mode, CPU) and the checkpoint's metadata; refuses mismatches in one line."""
    path = Path(path)
    ck = read_checkpoint(path)
    if fingerprint is not None and ck["fingerprint"] != fingerprint:
        raise CheckpointError(f"{path}: trained on cache {ck['fingerprint'][:16]}, not on {fingerprint[:16]}; "
                              "evaluate it on its own cache namespace or retrain on this one")
    ck_spec = ProjectorSpec.from_dict(ck["spec"])
    if spec is not None and spec != ck_spec:
        diff = [f"{k} {v} (expected {getattr(spec, k)})" for k, v in ck_spec.to_dict().items() if getattr(spec, k) != v]
        raise CheckpointError(f"{path}: projector shape differs from the run's: {', '.join(diff)}; "
                              "use the checkpoint that belongs to this run")
    spec = ck_spec
    for name, want, have in (("audio", audio_shape, (spec.audio_clips, spec.audio_dim)),
                             ("video", video_shape, (spec.video_clips, spec.video_dim))):
        if want is not None and tuple(want) != tuple(have):
            raise CheckpointError(f"{path}: projector expects {name} input {list(have)} (clips, dim), the cache has "
                                  f"{list(want)}; use a checkpoint trained on this cache")
    model = BindingModel(spec)
    own = model.state_dict()
    given = ck["state_dict"]
    missing = sorted(set(own) - set(given))
    extra = sorted(set(given) - set(own))
    if missing or extra:
        raise CheckpointError(f"{path}: projector shape differs from its spec ({len(missing)} missing tensors, "
                              f"{len(extra)} unexpected, e.g. {(missing or extra)[0]})")
    for k, v in own.items():
        if tuple(given[k].shape) != tuple(v.shape):
            raise CheckpointError(f"{path}: projector shape differs: {k} is {list(given[k].shape)} in the checkpoint, "
                                  f"{list(v.shape)} for its spec")
    model.load_state_dict(given)
    model.eval()
    meta = {k: v for k, v in ck.items() if k not in ("state_dict", "training")}
    return model, meta
