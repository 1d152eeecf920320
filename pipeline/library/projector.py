"""How audio windows and videos get into a library's space: a run's heads, or the encoder's raw space."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mvbind.cache import fingerprint
from mvbind.errors import MvbindError
from mvbind.pipeline.binding.checkpoint import load_checkpoint
from mvbind.pipeline.binding.pooling import mean_pool
from mvbind.pipeline.binding.projector import BindingModel, ProjectorSpec
from mvbind.pipeline.binding.runs import RunError, find_run
from mvbind.pipeline.config import Config
from mvbind.pipeline.library.store import LibraryError


# -- the projector: a run's heads, or the encoder's raw space ----------------------------------
@dataclass
class Projector:
    """How audio windows and videos get into the library's space."""

    kind: str  # "run" | "zero-shot"
    identity: dict  # stored in the library; a library is only searched with the same identity
    fingerprint: str  # the video namespace (encoder settings) the projector belongs to
    model: BindingModel | None = None
    spec: ProjectorSpec | None = None

    @property
    def dim(self) -> int:
        return int(self.spec.embed_dim) if self.spec else int(self.identity["dim"])

    def describe(self) -> str:
        if self.kind == "zero-shot":
            return (f"zero-shot: {self.identity['space']} (no trained projector; windows and videos compared by "
                    "raw cosine)")
        sha = self.identity["checkpoint_sha256"][:12]
        return f"run {self.identity['run']} (checkpoint {sha}…, epoch {self.identity.get('epoch')})"

    @torch.no_grad()
    def windows(self, audio: np.ndarray, *, batch: int = 8192) -> np.ndarray:
        """(W, dim) per-window embeddings -> (W, E) L2-normalised vectors: each window is one clip,
        pooled and projected as stage two does with an item's audio clips."""
        clips = audio[:, None, :]
        if self.model is None:
            return mean_pool(clips)
        out = []
        for a in range(0, len(clips), batch):
            part = clips[a:a + batch]
            x = torch.from_numpy(part) if self.spec.pooling == "attention" else torch.from_numpy(mean_pool(part))
            out.append(self.model.encode_audio(x).numpy())
        return np.concatenate(out) if out else np.zeros((0, self.dim), np.float32)

    @torch.no_grad()
    def videos(self, clips: np.ndarray) -> np.ndarray:
        """(n, clips, dim) cached per-clip video embeddings -> (n, E) L2-normalised queries."""
        if self.model is None:
            return mean_pool(clips)
        x = torch.from_numpy(clips) if self.spec.pooling == "attention" else torch.from_numpy(mean_pool(clips))
        return self.model.encode_video(x).numpy()


def settings_diff(a: dict, b: dict, names: tuple[str, str] = ("run", "these settings"), limit: int = 3) -> str:
    """The first differing keys of two settings dicts, as 'key: x (a) vs y (b)'."""
    def flat(d, prefix=""):
        out = {}
        for k, v in d.items():
            if isinstance(v, dict):
                out.update(flat(v, f"{prefix}{k}."))
            else:
                out[f"{prefix}{k}"] = v
        return out

    fa, fb = flat(a), flat(b)
    diffs = [f"{k}: {fa.get(k, '—')} ({names[0]}) vs {fb.get(k, '—')} ({names[1]})"
             for k in sorted(set(fa) | set(fb)) if fa.get(k) != fb.get(k) and not k.startswith("shapes")]
    more = f" and {len(diffs) - limit} more" if len(diffs) > limit else ""
    return "; ".join(diffs[:limit]) + more if diffs else "settings differ"


def load_projector(config: Config, run: str | Path | None, video_settings: dict) -> Projector:
    """The run's projector (checked against these encoder settings), or the zero-shot identity."""
    fp = fingerprint(video_settings)
    shapes = video_settings["shapes"]
    enc = video_settings["encoder"]
    if run is None:
        if shapes["audio"][1] != shapes["video"][1]:
            raise MvbindError(f"zero-shot needs audio and video embeddings in one space; encoder {enc['name']} has "
                              f"{shapes['audio'][1]}-d audio and {shapes['video'][1]}-d video: pass --run RUN "
                              "(a run trained with `mvbind train`)")
        space = "ImageBind's raw audio-vision space" if enc["name"] == "imagebind" else f"raw {enc['name']} space"
        return Projector("zero-shot", {"kind": "zero-shot", "space": space, "dim": int(shapes["audio"][1])}, fp)
    rd = find_run(config, run)
    try:
        cache = json.loads((rd / "cache.json").read_text())
        spec = ProjectorSpec.from_dict(json.loads((rd / "model.json").read_text()))
    except (OSError, ValueError, TypeError) as err:
        raise RunError(f"{rd}: cache.json/model.json unreadable ({err}); the run directory is incomplete") from None
    if cache.get("fingerprint") != fp:
        why = settings_diff(cache.get("settings", {}), video_settings)
        raise RunError(f"run {rd.name} was trained on cache {str(cache.get('fingerprint'))[:16]}, these encoder "
                       f"settings give {fp[:16]} ({why}); use the run's encoder settings (--arch/--weights/--set)")
    model, meta = load_checkpoint(rd / "best.pt", fingerprint=fp, audio_shape=tuple(shapes["audio"]),
                                  video_shape=tuple(shapes["video"]), spec=spec)
    with open(rd / "best.pt", "rb") as f:
        sha = hashlib.file_digest(f, "sha256").hexdigest()
    identity = {"kind": "run", "run": rd.name, "run_dir": str(rd.resolve()), "checkpoint_sha256": sha,
                "epoch": meta.get("epoch"), "spec": spec.to_dict(), "trained_on": fp, "dim": spec.embed_dim}
    return Projector("run", identity, fp, model.eval(), spec)


def check_compatible(library: Path, header: dict, projector: Projector) -> None:
    """Refuse, in one line, a library built for other encoder settings or another projector."""
    lib_fp = header.get("encoder_fingerprint", "")
    built = header.get("projector", {})
    if lib_fp != projector.fingerprint:
        raise LibraryError(
            f"{library}: built for encoder namespace {lib_fp[:16]} ({header.get('encoder_description', '?')}), "
            f"{'run ' + projector.identity['run'] + ' uses' if projector.kind == 'run' else 'these settings use'} "
            f"{projector.fingerprint[:16]}; use the library's encoder settings or re-index with `mvbind index`")
    if built.get("kind") != projector.kind:
        if built.get("kind") == "zero-shot":
            raise LibraryError(f"{library}: a zero-shot library (raw encoder space) can't be searched with run "
                               f"{projector.identity['run']}'s heads; re-index with --run {projector.identity['run']}"
                               " or leave out --run")
        raise LibraryError(f"{library}: built with run {built.get('run')}'s audio head; pass --run {built.get('run')} "
                           "(or re-index without --run for zero-shot use)")
    if projector.kind == "run" and built.get("checkpoint_sha256") != projector.identity["checkpoint_sha256"]:
        same_spec = built.get("spec") == projector.identity["spec"]
        what = "another checkpoint" if same_spec else "a different projector head"
        raise LibraryError(f"{library}: built with run {built.get('run')} (checkpoint "
                           f"{str(built.get('checkpoint_sha256'))[:12]}…), {what} than run "
                           f"{projector.identity['run']} ({projector.identity['checkpoint_sha256'][:12]}…); "
                           f"re-index with --run {projector.identity['run']}")
