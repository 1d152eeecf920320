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
    linear = BindingModel(spec("linear"))
    torch.manual_seed(0)  # the branches are drawn last: the same seed gives the linear model's maps
    residual = BindingModel(spec("residual", dropout=0.5))
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
    residual.set_branch(False)  # skipped (while frozen in training): the linear map alone
    linear_part = residual.heads["video"].proj(residual.pools["video"](x))
    assert torch.equal(residual.encode_video(x), torch.nn.functional.normalize(linear_part, dim=-1))


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


def test_the_branch_learns_at_its_own_scale_of_the_learning_rate():
    from mvbind.pipeline.binding.loss import BindingLoss
    from mvbind.pipeline.binding.projector import param_groups
    from mvbind.pipeline.binding.training import train_epoch

    torch.manual_seed(2)
    model = BindingModel(spec("residual"))
    groups = param_groups(model, 0.1, branch_lr_scale=0.25)
    branch = {id(p) for g in groups if g["lr_scale"] == 0.25 for p in g["params"]}
    named = {name for name, p in model.named_parameters() if id(p) in branch}
    assert named == {f"heads.{m}.branch.{k}" for m in ("video", "audio")
                     for k in ("ln.weight", "ln.bias", "fc1.weight", "fc1.bias", "fc2.weight")}
    assert all(g["weight_decay"] == (0.1 if g["params"][0].ndim == 2 else 0.0) for g in groups if g["params"])
    opt = torch.optim.AdamW(groups, lr=1.0)
    video, audio = torch.randn(32, 5, 16), torch.randn(32, 3, 12)
    train_epoch(model, opt, BindingLoss(), video, audio, torch.arange(32), batch_size=16,
                generator=torch.Generator().manual_seed(0), lr_of_step=lambda step: 0.01)
    assert sorted({g["lr"] for g in opt.param_groups}) == [0.0025, 0.01]
    # linear and mlp heads have no branch: two groups, as before
    assert [g["lr_scale"] for g in param_groups(BindingModel(spec("mlp")), 0.1, 0.25)] == [1.0, 1.0]
