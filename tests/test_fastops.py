"""pipeline.binding.fastops against torch's own normalize and dropout."""

import torch
import torch.nn.functional as F

from mvbind.pipeline.binding.fastops import Dropout, dropout, l2_normalize


def test_l2_normalize_forward_equals_torch_and_backward_passes_gradcheck():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 5, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(l2_normalize, (x,))
    x32 = torch.randn(64, 32, generator=g, requires_grad=True)
    assert torch.equal(l2_normalize(x32), F.normalize(x32, dim=-1))
    # the closed-form gradient equals autograd's, including a row under eps (the clamp is active)
    with torch.no_grad():
        x[2] = 1e-14
    up = torch.randn(6, 5, generator=g, dtype=torch.float64)
    got = torch.autograd.grad(l2_normalize(x), x, up)[0]
    want = torch.autograd.grad(F.normalize(x, dim=-1), x, up)[0]
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_dropout_semantics_and_repeatability():
    x = torch.randn(128, 300, generator=torch.Generator().manual_seed(1), requires_grad=True)
    torch.manual_seed(5)
    y = dropout(x, 0.3)
    kept = y != 0
    assert abs(float(kept.float().mean()) - 0.7) < 0.01
    noise = kept.float() / 0.7  # torch's dropout: x * (bernoulli mask / (1 - p)), in float32
    assert torch.equal(y, x * noise)
    up = torch.randn(128, 300)
    (grad,) = torch.autograd.grad(y, x, up)
    assert torch.equal(grad, up * noise)
    torch.manual_seed(5)
    assert torch.equal(dropout(x, 0.3), y)  # the seed comes from torch's global generator
    assert not torch.equal(dropout(x, 0.3), y)  # and each call draws a new one
    module = Dropout(0.3)
    module.eval()
    assert module(x) is x
    assert module.state_dict() == {}
