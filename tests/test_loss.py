"""The contrastive loss (pipeline.loss) against hand-written formulas on tiny batches."""

import math

import pytest
import torch
import torch.nn.functional as F

from mvbind.pipeline.binding.loss import BindingLoss, _multi_positive, contrastive_loss
from mvbind.pipeline.binding.projector import BindingModel, ProjectorSpec


def tiny_batch(b=4, d=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    v = F.normalize(torch.randn(b, d, generator=g, dtype=torch.float64), dim=1)
    a = F.normalize(torch.randn(b, d, generator=g, dtype=torch.float64), dim=1)
    return v, a


def hand_loss(v, a, scale, groups=None):
    """-1/B Σ_i log(Σ_{j∈P(i)} e^{s v_i·a_j} / Σ_j e^{s v_i·a_j}), both directions, averaged; with loops."""
    b = len(v)
    groups = list(range(b)) if groups is None else list(groups)
    d = v.shape[1]
    logit = [[scale * sum(float(v[i][k]) * float(a[j][k]) for k in range(d)) for j in range(b)] for i in range(b)]
    v2m = m2v = 0.0
    for i in range(b):
        pos = sum(math.exp(logit[i][j]) for j in range(b) if groups[j] == groups[i])
        v2m -= math.log(pos / sum(math.exp(logit[i][j]) for j in range(b)))
        pos = sum(math.exp(logit[j][i]) for j in range(b) if groups[j] == groups[i])
        m2v -= math.log(pos / sum(math.exp(logit[j][i]) for j in range(b)))
    return (v2m / b + m2v / b) / 2


def test_equals_hand_formula_single_positive():
    v, a = tiny_batch()
    scale = 1 / 0.07
    assert float(contrastive_loss(v, a, scale)) == pytest.approx(hand_loss(v, a, scale), rel=1e-12)


def test_equals_clip_cross_entropy():
    v, a = tiny_batch(b=6, d=5, seed=1)
    logits = 10.0 * v @ a.T
    target = torch.arange(6)
    clip = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
    assert float(contrastive_loss(v, a, 10.0)) == pytest.approx(float(clip), rel=1e-12)


def test_equals_hand_formula_multi_positive():
    v, a = tiny_batch(b=5, d=3, seed=2)
    groups = [0, 1, 0, 2, 1]
    got = contrastive_loss(v, a, 7.5, torch.tensor(groups))
    assert float(got) == pytest.approx(hand_loss(v, a, 7.5, groups), rel=1e-12)
    # all-distinct groups are plain CLIP; multi_positive=False ignores groups
    assert float(contrastive_loss(v, a, 7.5, torch.arange(5))) == pytest.approx(hand_loss(v, a, 7.5), rel=1e-12)
    off = BindingLoss(multi_positive=False)(v, a, torch.tensor(7.5), torch.tensor(groups))
    assert float(off) == pytest.approx(hand_loss(v, a, 7.5), rel=1e-12)


def test_group_members_are_never_pushed_apart():
    g = torch.Generator().manual_seed(3)
    logits = (torch.randn(6, 6, generator=g, dtype=torch.float64) * 3).requires_grad_()
    groups = torch.tensor([0, 0, 0, 1, 2, 2])
    positive = groups[:, None] == groups[None, :]
    _multi_positive(logits, positive).backward()
    assert (logits.grad[positive] <= 0).all()  # descent raises every positive logit
    assert (logits.grad[~positive] >= 0).all()  # and lowers every negative one


def test_logit_scale_init_and_clamp():
    model = BindingModel(ProjectorSpec(audio_dim=8, video_dim=8, audio_clips=3, video_clips=15, projector="linear",
                                       embed_dim=4))
    assert float(model.logit_scale.detach().exp()) == pytest.approx(1 / 0.07)
    with torch.no_grad():
        model.logit_scale.fill_(math.log(1000.0))
    model.clamp_logit_scale(100.0)
    assert float(model.logit_scale.detach().exp()) == pytest.approx(100.0)


@pytest.mark.parametrize("groups", [None, [0, 1, 0, 2, 1, 3, 3, 4]])
def test_fused_backward_matches_autograd(groups):
    """The hand-written backward of the one-pass loss: gradcheck in float64, and the same value and
    gradients (video, audio, scale) as plain autograd through cross-entropy / logsumexp."""
    from mvbind.pipeline.binding.loss import reference_loss

    v, a = tiny_batch(b=8, d=5, seed=4)
    v, a = v.requires_grad_(), a.requires_grad_()
    s = torch.tensor(7.3, dtype=torch.float64, requires_grad=True)
    g = None if groups is None else torch.tensor(groups)
    assert torch.autograd.gradcheck(lambda v, a, s: contrastive_loss(v, a, s, g), (v, a, s))
    got = contrastive_loss(v, a, s, g)
    want = reference_loss(v, a, s, g)
    assert float(got.detach()) == pytest.approx(float(want.detach()), rel=1e-12)
    for x, y in zip(torch.autograd.grad(got, (v, a, s)), torch.autograd.grad(want, (v, a, s))):
        torch.testing.assert_close(x, y, rtol=1e-10, atol=1e-12)
    # a frozen temperature (train.learn_temperature false) and a plain float scale
    frozen = contrastive_loss(v, a, s.detach(), g)
    assert float(frozen.detach()) == pytest.approx(float(want.detach()), rel=1e-12)
    assert float(contrastive_loss(v, a, 7.3, g).detach()) == pytest.approx(float(want.detach()), rel=1e-12)
