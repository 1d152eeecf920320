"""The binding heads: the residual head starts as the linear one; earlier runs' checkpoints still load."""

from __future__ import annotations

import torch

from mvbind.pipeline.binding.checkpoint import load_checkpoint, save_checkpoint
from mvbind.pipeline.binding.projector import BindingModel, ProjectorSpec


def spec(projector: str, **kw) -> ProjectorSpec:
    return ProjectorSpec(audio_dim=12, video_dim=16, audio_clips=3, video_clips=5, projector=projector, embed_dim=8,
                         hidden_dim=32, **kw)


def test_residual_head_starts_as_the_linear_head_and_then_learns_a_nonlinearity():
    torch.manual_seed(0)
    linear, residual = BindingModel(spec("linear")), BindingModel(spec("residual", dropout=0.5))
    for m in linear.modalities:
        residual.heads[m].proj.weight.data.copy_(linear.heads[m].proj.weight)
    x = torch.randn(6, 5, 16)
    residual.train()  # dropout on: the zero-initialised last layer still adds exactly nothing
    assert torch.equal(residual.encode_video(x), linear.encode_video(x))
    opt = torch.optim.SGD(residual.parameters(), lr=0.5)
    v, a, scale = residual(x, torch.randn(6, 3, 12))
    (-(v * a).sum()).backward()
    opt.step()
    assert residual.heads["video"].branch.fc2.weight.abs().sum() > 0  # the branch gets gradient from step one
    residual.eval()
    assert not torch.allclose(residual.encode_video(x), linear.encode_video(x))


def test_residual_runs_round_trip_through_checkpoints(tmp_path):
    torch.manual_seed(1)
    model = BindingModel(spec("residual"))
    torch.nn.init.normal_(model.heads["audio"].branch.fc2.weight)
    save_checkpoint(tmp_path / "best.pt", model, fingerprint="f" * 64, epoch=3, metrics={})
    loaded, meta = load_checkpoint(tmp_path / "best.pt", fingerprint="f" * 64, spec=spec("residual"))
    x = torch.randn(4, 3, 12)
    model.eval()
    assert meta["spec"]["projector"] == "residual" and torch.equal(loaded.encode_audio(x), model.encode_audio(x))


def test_linear_and_mlp_heads_keep_the_tensors_earlier_runs_saved():
    """Checkpoints of earlier runs hold exactly these tensors (listed from the implementation before
    the residual head existed); a strict load needs the same names and shapes."""
    before = {
        "linear": {"heads.video.proj.weight": (8, 16)},
        "mlp": {"heads.video.blocks.0.fc1.bias": (32,), "heads.video.blocks.0.fc1.weight": (32, 16),
                "heads.video.blocks.0.fc2.bias": (16,), "heads.video.blocks.0.fc2.weight": (16, 32),
                "heads.video.blocks.0.ln.bias": (16,), "heads.video.blocks.0.ln.weight": (16,),
                "heads.video.ln_out.bias": (16,), "heads.video.ln_out.weight": (16,),
                "heads.video.proj.bias": (8,), "heads.video.proj.weight": (8, 16)},
    }
    for projector, tensors in before.items():
        state = BindingModel(spec(projector)).state_dict()
        now = {k: tuple(v.shape) for k, v in state.items() if k.startswith("heads.video.")}
        assert now == tensors, projector
    # an old spec (no field this version added) still names a model
    old = {k: v for k, v in spec("mlp").to_dict().items()}
    assert ProjectorSpec.from_dict(old) == spec("mlp")
