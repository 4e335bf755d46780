"""Fake quantization: forward equals qparams.fake_quantize, STE gradient is the clipped identity, LSQ scale learns."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as hs

from slimtorch.quant.fake import FakeQuantLinear, fake_quantize_ste, round_ste
from slimtorch.quant.qparams import fake_quantize


@settings(max_examples=30, deadline=None)
@given(seed=hs.integers(0, 999), scale=hs.floats(0.01, 2.0), zero=hs.integers(-3, 3))
def test_forward_equals_fake_quantize_and_gradient_is_clipped_identity(seed, scale, zero):
    x = (torch.randn(200, generator=torch.Generator().manual_seed(seed)) * 100 * scale).requires_grad_()
    s, z = torch.tensor(scale), torch.tensor(zero)
    y = fake_quantize_ste(x, s, z.float(), -128, 127)
    assert torch.allclose(y, fake_quantize(x.detach(), s, z), atol=1e-5 * scale)
    y.sum().backward()
    inside = ((x.detach() / scale).round() + zero >= -128) & ((x.detach() / scale).round() + zero <= 127)
    assert torch.equal(x.grad, inside.float())


def test_round_ste_passes_gradient_through():
    x = torch.tensor([0.2, 1.7], requires_grad=True)
    round_ste(x).sum().backward()
    assert x.grad.tolist() == [1.0, 1.0]


def test_lsq_scale_gets_a_gradient_and_weights_match_int4_groups():
    lin = torch.nn.Linear(64, 8)
    fq = FakeQuantLinear(lin, bits=4, group_size=32)
    w = fq.fake_weight()
    assert torch.allclose(w, fake_quantize(lin.weight.detach(), fq.weight_scale.detach(), torch.zeros(8, 2,
                          dtype=torch.int32), bits=4, axis=0, group_size=32), atol=1e-6)
    fq(torch.randn(4, 64)).pow(2).sum().backward()
    assert fq.weight_scale.grad is not None and fq.weight_scale.grad.abs().sum() > 0
