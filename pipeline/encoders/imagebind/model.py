"""ImageBind's audio and vision encoders (frozen feature extractors for mvbind).

A re-implementation of the two ImageBind towers mvbind needs, written against
modern PyTorch (``scaled_dot_product_attention``, no timm/einops). The module
tree mirrors upstream ``ImageBindModel`` so that the audio + vision entries of the
official ``imagebind_huge.pth`` load with ``load_state_dict(strict=True)``::

    modality_preprocessors.{vision,audio}   patch stem + CLS token + learned positions
    modality_trunks.{vision,audio}          pre-norm transformer
    modality_heads.{vision,audio}           LayerNorm -> CLS token -> Linear (no bias)
    modality_postprocessors.{vision,audio}  L2 normalise (audio: x exp(log 20), max 100)

Differences between the towers (as upstream): the vision trunk has a LayerNorm
(eps 1e-6) before the blocks and plain attention; the audio trunk has no such
LayerNorm, learned key/value bias tokens (``add_bias_kv``) and stochastic depth
(active only in training). The audio patch stem has a LayerNorm (eps 1e-5); the
vision stem repeats a single frame to two frames before its Conv3d.

Inputs are ImageBind's preprocessed tensors: audio ``(N, 1, 128, 204)`` mel
spectrograms, vision ``(N, 3, 2, 224, 224)`` two-frame clips (or ``(N, 3, 224, 224)``
images). ``embed_audio`` / ``embed_vision`` give one row per clip; ``forward``
keeps upstream's dict-in/dict-out semantics including its clip averaging.

The text tower is a separate model (:mod:`.text`) built from the blocks here, so this one
never holds or loads the text half of the checkpoint.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

MODALITIES = ("vision", "audio")
M = TypeVar("M", bound=nn.Module)

_HUGE: dict[str, Any] = {
    "video_frames": 2,
    "kernel_size": (2, 14, 14),
    "audio_kernel_size": 16,
    "audio_stride": 10,
    "out_embed_dim": 1024,
    "vision_embed_dim": 1280,
    "vision_num_blocks": 32,
    "vision_num_heads": 16,
    "audio_embed_dim": 768,
    "audio_num_blocks": 12,
    "audio_num_heads": 12,
    "audio_num_mel_bins": 128,
    "audio_target_len": 204,
    "audio_drop_path": 0.1,
}

# The audio + vision part of the reference fixture's tiny_config.json (resolved kwargs).
_TINY: dict[str, Any] = {
    **_HUGE,
    "out_embed_dim": 32,
    "vision_embed_dim": 64,
    "vision_num_blocks": 2,
    "vision_num_heads": 4,
    "audio_embed_dim": 48,
    "audio_num_blocks": 2,
    "audio_num_heads": 4,
}

# ViT-S-sized encoders (random init only): a model big enough to dominate decoding on a CPU,
# for benchmarks and experiments; no pretrained weights exist for it.
_SMALL: dict[str, Any] = {
    **_HUGE,
    "vision_embed_dim": 384,
    "vision_num_blocks": 12,
    "vision_num_heads": 6,
    "audio_embed_dim": 384,
    "audio_num_blocks": 12,
    "audio_num_heads": 6,
}

_ARCHS: dict[str, dict[str, Any]] = {"huge": _HUGE, "small": _SMALL, "tiny": _TINY}


def imagebind_config(arch: str) -> dict[str, Any]:
    """Constructor settings of a named architecture.

    "huge" is the released model; "small" (ViT-S sized) and "tiny" (the reference fixture's) are
    for random-init benchmarks and tests.
    """
    try:
        return dict(_ARCHS[arch])
    except KeyError:
        raise ValueError(f"unknown ImageBind architecture {arch!r}; valid: {', '.join(_ARCHS)}") from None


# ---------------------------------------------------------------------------- building blocks


class PadIm2Video(nn.Module):
    """Turn images (B, C, H, W) or one-frame clips into ``ntimes``-frame clips by repeating the frame."""

    def __init__(self, ntimes: int, time_dim: int = 2) -> None:
        super().__init__()
        self.ntimes = ntimes
        self.time_dim = time_dim

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim == 4:
            x = x.unsqueeze(self.time_dim)
        elif x.ndim != 5:
            raise ValueError(f"expected (B, C, H, W) or (B, C, T, H, W) input, got shape {tuple(x.shape)}")
        if x.shape[self.time_dim] == 1:
            repeats = [1] * x.ndim
            repeats[self.time_dim] = self.ntimes
            x = x.repeat(repeats)
        return x


class PatchStem(nn.Module):
    """Convolutional patch embedding: (B, C, ...) -> (B, num_patches, dim), optionally layer-normalised."""

    def __init__(self, proj: nn.Module, norm_layer: nn.Module | None = None) -> None:
        super().__init__()
        self.proj = proj
        self.norm_layer = norm_layer

    def forward(self, x: Tensor) -> Tensor:
        x = self.proj(x).flatten(2).transpose(1, 2)
        return x if self.norm_layer is None else self.norm_layer(x)


class PosEmbedding(nn.Module):
    """Learned position embedding for the CLS token and every patch."""

    def __init__(self, num_tokens: int, dim: int) -> None:
        super().__init__()
        self.pos_embed = nn.Parameter(torch.empty(1, num_tokens, dim))


class PatchPreprocessor(nn.Module):
    """Stem -> prepend a CLS token -> add position embeddings.

    Positions are not interpolated: the input must have the size the model was
    built for (224 px and 2 frames for vision, 128 x 204 mel frames for audio).
    """

    def __init__(self, stem: PatchStem, num_patches: int, dim: int, input_desc: str) -> None:
        super().__init__()
        self.rgbt_stem = stem
        self.cls_token = nn.Parameter(torch.empty(1, 1, dim))
        self.pos_embedding_helper = PosEmbedding(num_patches + 1, dim)
        self.input_desc = input_desc
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """OpenCLIP-style init: N(0, 1) scaled by dim**-0.5."""
        scale = self.cls_token.shape[-1] ** -0.5
        nn.init.normal_(self.pos_embedding_helper.pos_embed, std=scale)
        nn.init.normal_(self.cls_token, std=scale)

    def forward(self, x: Tensor) -> Tensor:
        tokens = self.rgbt_stem(x)
        pos = self.pos_embedding_helper.pos_embed
        if tokens.shape[1] + 1 != pos.shape[1]:
            raise ValueError(
                f"input of shape {tuple(x.shape)} gives {tokens.shape[1]} patches, the model expects "
                f"{pos.shape[1] - 1}: inputs must be {self.input_desc}"
            )
        cls = self.cls_token.expand(tokens.shape[0], -1, -1)
        return torch.cat((cls, tokens), dim=1) + pos


class SelfAttention(nn.Module):
    """Multi-head self-attention on batch-first tokens via ``scaled_dot_product_attention``.

    Parameter names follow ``nn.MultiheadAttention`` (packed ``in_proj_weight``,
    ``out_proj``, optional ``bias_k``/``bias_v``) so upstream checkpoints load. With
    ``add_bias_kv`` one learned key and value token is appended to every sequence,
    after the input projection, exactly as ``nn.MultiheadAttention`` does. ``attn_mask``
    is added to the attention scores (the text tower's causal mask: 0 or -inf, (L, L)).
    """

    def __init__(self, dim: int, num_heads: int, add_bias_kv: bool = False) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embedding dim {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.in_proj_bias = nn.Parameter(torch.empty(3 * dim))
        if add_bias_kv:
            self.bias_k = nn.Parameter(torch.empty(1, 1, dim))
            self.bias_v = nn.Parameter(torch.empty(1, 1, dim))
        else:
            self.bias_k = self.bias_v = None
        self.out_proj = nn.Linear(dim, dim)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.in_proj_bias)
        nn.init.xavier_uniform_(self.out_proj.weight)
        nn.init.zeros_(self.out_proj.bias)
        if self.bias_k is not None:
            nn.init.xavier_normal_(self.bias_k)
            nn.init.xavier_normal_(self.bias_v)

    def forward(self, x: Tensor, attn_mask: Tensor | None = None) -> Tensor:
        b, n, d = x.shape
        q, k, v = F.linear(x, self.in_proj_weight, self.in_proj_bias).chunk(3, dim=-1)
        if self.bias_k is not None:
            k = torch.cat((k, self.bias_k.expand(b, 1, d)), dim=1)
            v = torch.cat((v, self.bias_v.expand(b, 1, d)), dim=1)
        h = self.num_heads
        q, k, v = (t.unflatten(-1, (h, d // h)).transpose(1, 2) for t in (q, k, v))
        if attn_mask is not None and attn_mask.is_floating_point():
            attn_mask = attn_mask.to(q.dtype)  # under autocast q is half precision, the stored mask is not
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        return self.out_proj(out.transpose(1, 2).reshape(b, n, d))


class Mlp(nn.Module):
    """Linear -> GELU -> Linear."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class DropPath(nn.Module):
    """Stochastic depth: drop the whole residual branch per sample with probability p (training only)."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"p={self.p}"


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm_1(x)), then x + mlp(norm_2(x))."""

    def __init__(self, dim: int, num_heads: int, add_bias_kv: bool, drop_path: float, mlp_ratio: int = 4) -> None:
        super().__init__()
        self.attn = SelfAttention(dim, num_heads, add_bias_kv)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm_1 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, mlp_ratio * dim)
        self.norm_2 = nn.LayerNorm(dim, eps=1e-6)

    def forward(self, x: Tensor, attn_mask: Tensor | None = None) -> Tensor:
        x = x + self.drop_path(self.attn(self.norm_1(x), attn_mask))
        return x + self.drop_path(self.mlp(self.norm_2(x)))


class Trunk(nn.Module):
    """Optional LayerNorm, then ``num_blocks`` blocks; drop-path rate grows linearly from 0 to ``drop_path``."""

    def __init__(
        self, dim: int, num_blocks: int, num_heads: int, *, pre_ln: bool, add_bias_kv: bool, drop_path: float
    ) -> None:
        super().__init__()
        # Sequential so the LayerNorm's keys are "pre_transformer_layer.0.*" as upstream.
        self.pre_transformer_layer = nn.Sequential(nn.LayerNorm(dim, eps=1e-6)) if pre_ln else nn.Identity()
        rates = torch.linspace(0, drop_path, num_blocks, device="cpu").tolist()
        self.blocks = nn.Sequential(*(Block(dim, num_heads, add_bias_kv, r) for r in rates))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """JAX/MAE-style init of the MLP linears and LayerNorms (attention inits itself)."""
        for m in self.modules():
            if isinstance(m, Mlp):
                for fc in (m.fc1, m.fc2):
                    nn.init.xavier_uniform_(fc.weight)
                    nn.init.zeros_(fc.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, tokens: Tensor, attn_mask: Tensor | None = None) -> Tensor:
        x = self.pre_transformer_layer(tokens)
        for block in self.blocks:
            x = block(x, attn_mask)
        return x


class SelectToken(nn.Module):
    """Pick one token (the CLS token by default) from (B, L, D)."""

    def __init__(self, index: int = 0) -> None:
        super().__init__()
        self.index = index

    def forward(self, x: Tensor) -> Tensor:
        return x[:, self.index]


class Normalize(nn.Module):
    """L2-normalise the last dimension."""

    def forward(self, x: Tensor) -> Tensor:
        return F.normalize(x, dim=-1, p=2)


class LogitScale(nn.Module):
    """Multiply by exp(``log_logit_scale``) clipped at ``max_scale``.

    Upstream's audio scale is a fixed buffer; its text scale was learned (a parameter), so its
    value is the checkpoint's, not the initial ``scale``. Either way the key is the same.
    """

    def __init__(self, scale: float, max_scale: float = 100.0, *, learnable: bool = False) -> None:
        super().__init__()
        self.max_scale = max_scale
        log_scale = torch.tensor(math.log(scale), dtype=torch.float32)
        if learnable:
            self.log_logit_scale = nn.Parameter(log_scale)
        else:
            self.register_buffer("log_logit_scale", log_scale)

    def forward(self, x: Tensor) -> Tensor:
        return torch.clip(self.log_logit_scale.exp(), max=self.max_scale) * x


def _conv_out(size: int, kernel: int, stride: int) -> int:
    return (size - kernel) // stride + 1


def _head(dim: int, out_dim: int) -> nn.Sequential:
    return nn.Sequential(nn.LayerNorm(dim, eps=1e-6), SelectToken(0), nn.Linear(dim, out_dim, bias=False))


# ---------------------------------------------------------------------------- the model


class ImageBindAV(nn.Module):
    """ImageBind's vision and audio encoders with upstream's parameter layout.

    Keyword arguments are those of upstream ``ImageBindModel`` that concern audio and
    vision; the defaults are ``imagebind_huge``'s. Build it with :func:`build_imagebind`.
    """

    def __init__(
        self,
        *,
        video_frames: int = 2,
        kernel_size: tuple[int, int, int] = (2, 14, 14),
        audio_kernel_size: int = 16,
        audio_stride: int = 10,
        out_embed_dim: int = 1024,
        vision_embed_dim: int = 1280,
        vision_num_blocks: int = 32,
        vision_num_heads: int = 16,
        audio_embed_dim: int = 768,
        audio_num_blocks: int = 12,
        audio_num_heads: int = 12,
        audio_num_mel_bins: int = 128,
        audio_target_len: int = 204,
        audio_drop_path: float = 0.1,
    ) -> None:
        super().__init__()
        kernel_size = tuple(kernel_size)
        self.config: dict[str, Any] = {
            "video_frames": video_frames,
            "kernel_size": kernel_size,
            "audio_kernel_size": audio_kernel_size,
            "audio_stride": audio_stride,
            "out_embed_dim": out_embed_dim,
            "vision_embed_dim": vision_embed_dim,
            "vision_num_blocks": vision_num_blocks,
            "vision_num_heads": vision_num_heads,
            "audio_embed_dim": audio_embed_dim,
            "audio_num_blocks": audio_num_blocks,
            "audio_num_heads": audio_num_heads,
            "audio_num_mel_bins": audio_num_mel_bins,
            "audio_target_len": audio_target_len,
            "audio_drop_path": audio_drop_path,
        }
        self.out_dim = out_embed_dim
        self.video_frames = video_frames
        self.image_size = 224
        self.audio_shape = (1, audio_num_mel_bins, audio_target_len)

        # Vision: (B, 3, T, 224, 224) -> Conv3d patches of kernel_size (T=2: one temporal patch).
        kt, kh, kw = kernel_size
        frames = max(video_frames, 2)  # PadIm2Video always yields at least 2 frames
        vision_patches = (
            _conv_out(frames, kt, kt) * _conv_out(self.image_size, kh, kh) * _conv_out(self.image_size, kw, kw)
        )
        vision_stem = PatchStem(
            nn.Sequential(
                PadIm2Video(ntimes=2),
                nn.Conv3d(3, vision_embed_dim, kernel_size=kernel_size, stride=kernel_size, bias=False),
            )
        )
        # Audio: (B, 1, mel, frames) -> overlapping Conv2d patches, then LayerNorm (default eps 1e-5).
        audio_patches = _conv_out(audio_num_mel_bins, audio_kernel_size, audio_stride) * _conv_out(
            audio_target_len, audio_kernel_size, audio_stride
        )
        audio_stem = PatchStem(
            nn.Conv2d(1, audio_embed_dim, kernel_size=audio_kernel_size, stride=audio_stride, bias=False),
            norm_layer=nn.LayerNorm(audio_embed_dim),
        )

        self.modality_preprocessors = nn.ModuleDict(
            {
                "vision": PatchPreprocessor(
                    vision_stem, vision_patches, vision_embed_dim,
                    f"(N, 3, {video_frames}, 224, 224) clips or (N, 3, 224, 224) images",
                ),
                "audio": PatchPreprocessor(
                    audio_stem, audio_patches, audio_embed_dim,
                    f"(N, 1, {audio_num_mel_bins}, {audio_target_len}) mel spectrograms",
                ),
            }
        )
        self.modality_trunks = nn.ModuleDict(
            {
                "vision": Trunk(
                    vision_embed_dim, vision_num_blocks, vision_num_heads,
                    pre_ln=True, add_bias_kv=False, drop_path=0.0,
                ),
                "audio": Trunk(
                    audio_embed_dim, audio_num_blocks, audio_num_heads,
                    pre_ln=False, add_bias_kv=True, drop_path=audio_drop_path,
                ),
            }
        )
        self.modality_heads = nn.ModuleDict(
            {"vision": _head(vision_embed_dim, out_embed_dim), "audio": _head(audio_embed_dim, out_embed_dim)}
        )
        self.modality_postprocessors = nn.ModuleDict(
            {"vision": Normalize(), "audio": nn.Sequential(Normalize(), LogitScale(20.0, max_scale=100.0))}
        )

    def encode(self, modality: str, x: Tensor, *, postprocess: bool = True) -> Tensor:
        """One embedding per batch row: preprocessor -> trunk -> head (-> postprocessor)."""
        if modality not in self.modality_trunks:
            raise ValueError(f"unknown modality {modality!r}; this model has {', '.join(MODALITIES)}")
        tokens = self.modality_preprocessors[modality](x)
        out = self.modality_heads[modality](self.modality_trunks[modality](tokens))
        return self.modality_postprocessors[modality](out) if postprocess else out

    def _like_params(self, x: Tensor) -> Tensor:
        w = self.modality_preprocessors["vision"].cls_token
        return x.to(device=w.device, dtype=w.dtype)

    def embed_audio(self, x: Tensor, *, postprocess: bool = True) -> Tensor:
        """Per-clip audio embeddings: (N, 1, 128, 204) -> (N, out_dim), rows of norm 20 when post-processed."""
        if x.ndim != 4 or tuple(x.shape[1:]) != self.audio_shape:
            raise ValueError(f"audio input must be (N, {', '.join(map(str, self.audio_shape))}), got {tuple(x.shape)}")
        return self.encode("audio", self._like_params(x), postprocess=postprocess)

    def embed_vision(self, x: Tensor, *, postprocess: bool = True) -> Tensor:
        """Per-clip vision embeddings: (N, 3, T, 224, 224) or (N, 3, 224, 224) -> (N, out_dim), unit rows."""
        if x.ndim not in (4, 5) or x.shape[1] != 3:
            raise ValueError(f"vision input must be (N, 3, T, 224, 224) or (N, 3, 224, 224), got {tuple(x.shape)}")
        return self.encode("vision", self._like_params(x), postprocess=postprocess)

    def head_audio(self, x: Tensor) -> Tensor:
        """Audio head output before the postprocessor (not normalised)."""
        return self.embed_audio(x, postprocess=False)

    def head_vision(self, x: Tensor) -> Tensor:
        """Vision head output before the postprocessor (not normalised)."""
        return self.embed_vision(x, postprocess=False)

    def forward(self, inputs: dict[str, Tensor], *, postprocess: bool = True) -> dict[str, Tensor]:
        """Upstream semantics: an input with ndim >= 5 is (B, S, ...); its S clips are embedded and averaged.

        The average is not re-normalised. Note that a 5-D per-clip video batch
        (N, 3, 2, 224, 224) is therefore read as B=N, S=3 and fails; use
        :meth:`embed_vision` (or shape (N, 1, 3, 2, 224, 224)) for per-clip vectors.
        """
        outputs: dict[str, Tensor] = {}
        for modality, value in inputs.items():
            if value is None:
                continue
            reduce = value.ndim >= 5
            if reduce:
                b, s = value.shape[:2]
                value = value.reshape(b * s, *value.shape[2:])
            out = self.encode(modality, value, postprocess=postprocess)
            outputs[modality] = out.reshape(b, s, -1).mean(dim=1) if reduce else out
        return outputs


def build_imagebind(arch: str | dict[str, Any] = "huge", seed: int | None = None) -> ImageBindAV:
    """Build the audio + vision ImageBind encoders.

    ``arch`` is "huge", "tiny" or a dict of :class:`ImageBindAV` keyword arguments
    (missing ones take the huge values). With ``seed`` the random initialisation is
    reproducible (the global RNG is left untouched). Respects an active
    ``torch.device(...)`` context, e.g. ``meta`` to build without allocating.
    """
    if isinstance(arch, str):
        config = imagebind_config(arch)
    else:
        unknown = set(arch) - set(_HUGE)
        if unknown:
            raise ValueError(f"unknown ImageBind settings {sorted(unknown)}; valid: {', '.join(_HUGE)}")
        config = {**_HUGE, **arch}
    return seeded(lambda: ImageBindAV(**config), seed)


def seeded(build: Callable[[], M], seed: int | None) -> M:
    """``build()``, after ``torch.manual_seed(seed)`` when a seed is given, leaving the global RNG as it was."""
    if seed is None:
        return build()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()
