"""The binding projector: one small head per modality into a shared space, plus the temperature.

    video clips ─► pool ─► L2 ─► head_v ─► L2 ─┐
                                               ├─► cosine · exp(logit_scale)  (clamped at 100)
    audio clips ─► pool ─► L2 ─► head_a ─► L2 ─┘

A head is one of:
- linear: one linear map to `embed_dim`;
- residual: that linear map plus an MLP branch, W x + U Drop(GELU(W1 LN(x))), whose last layer
  U starts at zero, so training starts from the linear head. The branch's weights are drawn after
  every other weight (a residual model's linear maps start as the linear model's with the same seed)
  and it can be switched off (`set_branch`): the training loop's phases use both (docs/STAGE_TWO.md);
- mlp: `depth` pre-LayerNorm residual MLP blocks at the input width (x + Drop(W2 GELU(W1 LN(x))))
  followed by LayerNorm and a linear map to `embed_dim` (the earlier default; it overfits).
`ProjectorSpec` holds every shape-determining choice; it is stored in checkpoints and a
checkpoint is only loaded into a model of the same spec.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mvbind.pipeline.binding.fastops import Dropout, l2_normalize
from mvbind.pipeline.binding.pooling import make_pool


@dataclass(frozen=True)
class ProjectorSpec:
    audio_dim: int
    video_dim: int
    audio_clips: int
    video_clips: int
    pooling: str = "mean"
    projector: str = "mlp"  # what checkpoints without the field were; new runs take train.projector
    embed_dim: int = 256
    hidden_dim: int = 1024
    depth: int = 1
    dropout: float = 0.1
    init_temperature: float = 0.07

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def dims(self) -> dict[str, int]:
        """Input width per modality, in head order (video first, as the loss takes them)."""
        return {"video": self.video_dim, "audio": self.audio_dim}

    @classmethod
    def from_dict(cls, d: dict) -> ProjectorSpec:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})

    @classmethod
    def from_train_config(cls, t, *, audio_shape: tuple[int, int], video_shape: tuple[int, int]) -> ProjectorSpec:
        return cls(audio_dim=int(audio_shape[1]), video_dim=int(video_shape[1]),
                   audio_clips=int(audio_shape[0]), video_clips=int(video_shape[0]),
                   pooling=t.pooling, projector=t.projector, embed_dim=t.embed_dim, hidden_dim=t.hidden_dim,
                   depth=t.depth, dropout=t.dropout, init_temperature=t.init_temperature)


class ResidualBlock(nn.Module):
    """Pre-LayerNorm residual MLP block: x + Dropout(W2 GELU(W1 LN(x)))."""

    def __init__(self, dim: int, hidden: int, dropout: float):
        super().__init__()
        self.ln = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.drop(self.fc2(F.gelu(self.fc1(self.ln(x)))))


class Branch(nn.Module):
    """The residual head's nonlinear part: U Drop(GELU(W1 LN(x))), with U zero at initialisation."""

    def __init__(self, dim: int, hidden: int, out: int, dropout: float):
        super().__init__()
        self.ln = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, out, bias=False)
        self.drop = Dropout(dropout)
        nn.init.zeros_(self.fc2.weight)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.drop(F.gelu(self.fc1(self.ln(x)))))


class Head(nn.Module):
    def __init__(self, in_dim: int, spec: ProjectorSpec):
        super().__init__()
        self.branch: Branch | None = None
        self.branch_on = True  # the training loop turns it off while the branch is frozen (not a weight)
        if spec.projector in ("linear", "residual"):
            self.blocks = nn.Sequential()
            self.ln_out = nn.Identity()
        elif spec.projector == "mlp":
            blocks = [ResidualBlock(in_dim, spec.hidden_dim, spec.dropout) for _ in range(spec.depth)]
            self.blocks = nn.Sequential(*blocks)
            self.ln_out = nn.LayerNorm(in_dim)
        else:
            raise ValueError(f"unknown projector {spec.projector!r}; choose linear, residual or mlp")
        self.proj = nn.Linear(in_dim, spec.embed_dim, bias=spec.projector == "mlp")

    def add_branch(self, spec: ProjectorSpec) -> None:
        self.branch = Branch(self.proj.in_features, spec.hidden_dim, spec.embed_dim, spec.dropout)

    def forward(self, x: Tensor) -> Tensor:
        z = self.proj(self.ln_out(self.blocks(x)))
        if self.branch is not None and self.branch_on:
            z = z + self.branch(x)
        return l2_normalize(z)


class BindingModel(nn.Module):
    """Pool + head per modality (keyed by modality name) and CLIP's learnable logit scale."""

    def __init__(self, spec: ProjectorSpec):
        super().__init__()
        self.spec = spec
        dims = spec.dims()
        self.pools = nn.ModuleDict({m: make_pool(spec.pooling, d) for m, d in dims.items()})
        self.heads = nn.ModuleDict({m: Head(d, spec) for m, d in dims.items()})
        if spec.projector == "residual":
            # drawn after every other weight, so a residual model's linear maps start exactly as the
            # linear projector's do (the same seed): frozen branches train exactly the linear run
            for head in self.heads.values():
                head.add_branch(spec)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / spec.init_temperature)))

    @property
    def modalities(self) -> tuple[str, ...]:
        return tuple(self.heads)

    def encode(self, modality: str, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """(n, clips, dim) per-clip, or (n, dim) already mean-pooled -> (n, embed_dim) unit vectors.

        `mask` (n, clips) bool pools only the True clips of per-clip input (training's clip dropout)."""
        return self.heads[modality](self.pools[modality](x) if mask is None else self.pools[modality](x, mask))

    def encode_video(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        return self.encode("video", x, mask)

    def encode_audio(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        return self.encode("audio", x, mask)

    def forward(self, video: Tensor, audio: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return self.encode_video(video), self.encode_audio(audio), self.logit_scale.exp()

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Checkpoints written before the heads were keyed by modality: video_head.* -> heads.video.*
        for key in [k for k in state_dict if k.startswith(prefix)]:
            rest = key[len(prefix):]
            for m in self.modalities:
                for old, new in ((f"{m}_head.", f"heads.{m}."), (f"{m}_pool.", f"pools.{m}.")):
                    if rest.startswith(old):
                        state_dict[prefix + new + rest[len(old):]] = state_dict.pop(key)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def set_branch(self, on: bool) -> None:
        """Use the residual heads' MLP branches or skip them (while frozen: then they add nothing, draw no
        dropout noise and get no gradient, so the head is exactly its linear map)."""
        for head in self.heads.values():
            head.branch_on = on

    @torch.no_grad()
    def clamp_logit_scale(self, max_scale: float) -> None:
        """CLIP: keep exp(logit_scale) in [1, max_scale] (done after every optimiser step)."""
        self.logit_scale.clamp_(0, math.log(max_scale))


def param_groups(model: nn.Module, weight_decay: float, branch_lr_scale: float = 1.0) -> list[dict]:
    """open_clip's rule: decay matrices only; not biases, LayerNorm gains, the pooling query, logit_scale.

    The residual heads' MLP branches get `lr_scale` = `branch_lr_scale` (the training loop multiplies
    each step's learning rate by a group's scale): Adam moves a zero-initialised layer as fast as any
    other, so without it the branch fits the training pairs within the first epochs, before the linear
    map has converged; slower, it adds nonlinearity only as far as a longer run earns it."""
    groups: dict[tuple[bool, bool], list] = {(b, d): [] for b in (False, True) for d in (False, True)}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        no_decay = p.ndim < 2 or "logit_scale" in name or ".ln" in name or "bias" in name or "query" in name
        groups[(".branch." in name, not no_decay)].append(p)
    out = []
    for (branch, decay), params in groups.items():
        if params or not branch:  # the two plain groups always exist (callers index them)
            out.append({"params": params, "weight_decay": weight_decay if decay else 0.0,
                        "lr_scale": branch_lr_scale if branch else 1.0, "branch": branch})
    return out
