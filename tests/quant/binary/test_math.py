import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from slimtorch.quant.binary.math import (
    binarize_input,
    binary_scale,
    fake_binary_weight,
    fake_ternary_weight,
    sign,
    sign_ste,
    ternary_codes,
    ternary_scale,
    ternary_ste,
    ternary_threshold,
)

shapes = st.sampled_from([(1, 1), (4, 9), (7, 33), (3, 2, 3, 3)])


@settings(max_examples=40, deadline=None)
@given(shape=shapes, seed=st.integers(0, 10_000))
def test_binary_scale_is_mean_abs_and_minimizes_the_error(shape, seed):
    w = torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    rows = w.reshape(shape[0], -1)
    alpha = binary_scale(w)
    assert torch.allclose(alpha, torch.tensor([r.abs().sum().item() / r.numel() for r in rows], dtype=w.dtype))
    # alpha = mean|w| minimizes ||w - a sign(w)||^2 over a: nudging it either way never helps
    err = lambda a: ((rows - a.unsqueeze(1) * sign(rows)) ** 2).sum(1)  # noqa: E731
    assert torch.all(err(alpha) <= err(alpha * 1.01) + 1e-12) and torch.all(err(alpha) <= err(alpha * 0.99) + 1e-12)


@settings(max_examples=40, deadline=None)
@given(shape=shapes, seed=st.integers(0, 10_000), ratio=st.floats(0.1, 1.5))
def test_ternary_threshold_codes_and_scale_follow_twn(shape, seed, ratio):
    w = torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    rows = w.reshape(shape[0], -1)
    delta = ternary_threshold(w, ratio)
    assert torch.allclose(delta, ratio * rows.abs().mean(1))
    codes = ternary_codes(w, ratio).reshape(shape[0], -1)
    assert torch.equal(codes, torch.sign(rows) * (rows.abs() > delta.unsqueeze(1)))
    alpha = ternary_scale(w, codes)
    for j in range(shape[0]):
        kept = rows[j][codes[j] != 0].abs()
        assert abs(alpha[j].item() - (kept.mean().item() if kept.numel() else 0.0)) < 1e-12


def test_default_ternary_threshold_is_0_7_mean_abs():
    w = torch.tensor([[1.0, -1.0, 0.2, -0.5, 0.69, 0.71]])  # mean |w| = 0.6833, delta = 0.4783
    assert torch.equal(ternary_codes(w), torch.tensor([[1.0, -1.0, 0.0, -1.0, 1.0, 1.0]]))
    assert abs(ternary_scale(w, ternary_codes(w)).item() - (1 + 1 + 0.5 + 0.69 + 0.71) / 5) < 1e-6


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), spread=st.floats(0.1, 4.0))
def test_estimator_gradient_is_the_clipped_identity(seed, spread):
    x = (torch.randn(50, generator=torch.Generator().manual_seed(seed)) * spread).requires_grad_()
    upstream = torch.randn(50, generator=torch.Generator().manual_seed(seed + 1))
    sign_ste(x).backward(upstream)
    assert torch.equal(x.grad, upstream * (x.detach().abs() <= 1))
    w = x.detach().clone().requires_grad_()
    ternary_ste(w.unsqueeze(0)).squeeze(0).backward(upstream)
    assert torch.equal(w.grad, upstream * (w.detach().abs() <= 1))


def test_forward_values_are_the_rounded_weights():
    w = torch.randn(6, 20)
    assert torch.equal(fake_binary_weight(w), binary_scale(w).unsqueeze(1) * sign(w))
    codes = ternary_codes(w)
    assert torch.equal(fake_ternary_weight(w), ternary_scale(w, codes).unsqueeze(1) * codes)


def test_binary_inputs_use_a_per_channel_shift_and_the_clipped_estimator():
    x = torch.tensor([[0.5, 2.5], [1.5, -3.0]], requires_grad=True)
    shift = torch.tensor([1.0, 0.0], requires_grad=True)
    out = binarize_input(x, shift)
    assert out.tolist() == [[-1.0, 1.0], [1.0, -1.0]]
    out.sum().backward()
    assert x.grad.tolist() == [[1.0, 0.0], [1.0, 0.0]]  # |x - shift| <= 1 only in column 0
    assert shift.grad.tolist() == [-2.0, 0.0]
