"""AdaRound: beats nearest rounding on the layer's output error, never loses to it, deterministic, clear errors."""

import time

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as hs
from torch import nn

import slimtorch as st
from slimtorch.errors import ConfigError
from slimtorch.quant.adaround import AdaRoundResult, adaround
from slimtorch.quant.ptq import quantize_weight
from slimtorch.quant.qparams import qrange


def linear_fn(x, w):
    return F.linear(x, w)


def anisotropic_inputs(n: int, features: int, seed: int, rank: int = 8) -> torch.Tensor:
    """Correlated inputs (a rank-``rank`` signal plus a little noise, as real activations are) whose columns span
    two orders of magnitude: the rounding errors of one row can be steered away from the directions the inputs
    occupy, which nearest rounding ignores."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(rank, features, generator=g)
    col_scale = torch.logspace(-1, 1, features)[torch.randperm(features, generator=g)]
    return (torch.randn(n, rank, generator=g) @ mix + 0.3 * torch.randn(n, features, generator=g)) * col_scale


def smooth_images(n: int, channels: int, size: int, seed: int) -> torch.Tensor:
    """Spatially smooth images (neighbouring pixels correlated) with per-channel scales from 0.1 to 10."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randn(n, channels, size // 2, size // 2, generator=g)
    x = F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)
    return x * torch.logspace(-1, 1, channels).reshape(1, -1, 1, 1)


def mse(layer_fn, x, w, w_q) -> float:
    return float(((layer_fn(x, w_q).double() - layer_fn(x, w).double()) ** 2).mean())


def check_result(res: AdaRoundResult, weight: torch.Tensor, scale: torch.Tensor, bits: int = 8) -> None:
    nearest = quantize_weight(weight, bits)[0]
    qmin, qmax = qrange(bits, signed=True)
    assert res.codes.dtype == torch.int8 and res.codes.shape == weight.shape
    assert int((res.codes.int() - nearest.int()).abs().max()) <= 1
    assert int(res.codes.min()) >= qmin and int(res.codes.max()) <= qmax
    assert res.loss <= res.loss_nearest


def test_linear_beats_nearest_rounding():
    torch.manual_seed(0)
    weight = torch.randn(32, 64) * 0.05
    x = anisotropic_inputs(512, 64, seed=1)
    _, scale, _ = quantize_weight(weight)
    res = adaround(weight, scale, linear_fn, x, iterations=400, batch_size=64)
    check_result(res, weight, scale)
    assert res.iterations == 400
    ratio = res.loss / res.loss_nearest
    print(f"linear 64->32 int8: loss {res.loss:.3e} / nearest {res.loss_nearest:.3e} = {ratio:.3f}")
    assert ratio < 0.8
    # the rounding learnt on 512 samples also helps on fresh samples of the same distribution
    held_out = anisotropic_inputs(2048, 64, seed=1)[512:]
    s = scale.reshape(-1, 1)
    held_ratio = mse(linear_fn, held_out, weight, res.codes.float() * s) / mse(
        linear_fn, held_out, weight, quantize_weight(weight)[0].float() * s)
    print(f"linear 64->32 int8, held-out samples: ratio {held_ratio:.3f}")
    assert held_ratio < 0.8
    # the reported losses are the real output errors of the returned codes
    assert res.loss == pytest.approx(mse(linear_fn, x, weight, res.codes.float() * s), rel=1e-6)
    assert res.loss_nearest == pytest.approx(mse(linear_fn, x, weight, quantize_weight(weight)[0].float() * s),
                                             rel=1e-6)


@pytest.mark.parametrize("channels,out,groups", [(8, 16, 1), (16, 16, 16)], ids=["conv", "depthwise"])
def test_conv2d_beats_nearest_rounding(channels, out, groups):
    torch.manual_seed(0)
    weight = torch.randn(out, channels // groups, 3, 3) * 0.1
    x = smooth_images(96, channels, 12, seed=2)
    _, scale, _ = quantize_weight(weight)

    def conv_fn(inp, w):
        return F.conv2d(inp, w, None, 1, 1, 1, groups)

    res = adaround(weight, scale, conv_fn, x, iterations=300, batch_size=16)
    check_result(res, weight, scale)
    ratio = res.loss / res.loss_nearest
    print(f"conv {channels}->{out} groups={groups} int8: loss {res.loss:.3e} / nearest {res.loss_nearest:.3e} "
          f"= {ratio:.3f}")
    assert ratio < 0.8
    assert res.loss == pytest.approx(mse(conv_fn, x, weight, res.codes.float() * scale.reshape(-1, 1, 1, 1)),
                                     rel=1e-6)


def test_no_steps_is_nearest_rounding():
    weight = torch.randn(8, 16)
    x = anisotropic_inputs(40, 16, seed=3)
    nearest, scale, _ = quantize_weight(weight)
    for res in [adaround(weight, scale, linear_fn, x, iterations=0),
                adaround(weight, scale, linear_fn, x, iterations=50, deadline=time.perf_counter() - 1.0)]:
        assert res.iterations == 0
        assert torch.equal(res.codes, nearest)
        assert res.loss == res.loss_nearest > 0


def test_falls_back_to_nearest_when_it_would_lose():
    """A layer_fn that misleads the optimizer (it negates the output while gradients are on) makes codes worse
    than nearest rounding on the true objective; the nearest codes come back instead."""

    def misleading_fn(x, w):
        return -F.linear(x, w) if torch.is_grad_enabled() else F.linear(x, w)

    weight = torch.randn(8, 16, generator=torch.Generator().manual_seed(5))
    x = anisotropic_inputs(64, 16, seed=3)
    nearest, scale, _ = quantize_weight(weight)
    res = adaround(weight, scale, misleading_fn, x, iterations=50, batch_size=16)
    assert res.iterations == 50
    assert torch.equal(res.codes, nearest) and res.loss == res.loss_nearest > 0


def test_deadline_stops_early_with_valid_codes():
    weight = torch.randn(8, 16)
    x = anisotropic_inputs(40, 16, seed=3)
    _, scale, _ = quantize_weight(weight)
    res = adaround(weight, scale, linear_fn, x, iterations=10**7, deadline=time.perf_counter() + 0.3)
    assert 0 < res.iterations < 10**7
    check_result(res, weight, scale)


@settings(max_examples=12, deadline=None)
@given(seed=hs.integers(0, 2**16), out=hs.integers(1, 6), inp=hs.integers(1, 12), n=hs.integers(1, 20),
       bits=hs.integers(2, 8), reg_weight=hs.sampled_from([0.0, 0.01, 10.0]), lr=hs.sampled_from([1e-3, 0.1, 1.0]))
def test_never_worse_than_nearest(seed, out, inp, n, bits, reg_weight, lr):
    g = torch.Generator().manual_seed(seed)
    weight = torch.randn(out, inp, generator=g)
    x = torch.randn(n, inp, generator=g) * torch.rand(inp, generator=g) * 10
    _, scale, _ = quantize_weight(weight, bits)
    res = adaround(weight, scale, linear_fn, x, bits=bits, iterations=25, batch_size=4, lr=lr,
                   reg_weight=reg_weight, seed=seed)
    check_result(res, weight, scale, bits)


def test_deterministic_for_a_seed_and_leaves_inputs_alone():
    torch.manual_seed(0)
    weight = (torch.randn(16, 32) * 0.05).requires_grad_(True)
    x = anisotropic_inputs(128, 32, seed=4).requires_grad_(True)
    w0, x0 = weight.detach().clone(), x.detach().clone()
    _, scale, _ = quantize_weight(weight)
    a, b = (adaround(weight, scale, linear_fn, x, iterations=100, batch_size=16, seed=7) for _ in range(2))
    assert torch.equal(a.codes, b.codes) and a.loss == b.loss and a.loss_nearest == b.loss_nearest
    assert weight.grad is None and x.grad is None
    assert torch.equal(weight.detach(), w0) and torch.equal(x.detach(), x0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu_contract():
    weight = torch.randn(32, 64, device="cuda") * 0.05
    x = anisotropic_inputs(512, 64, seed=1)  # inputs may stay on the CPU; batches move to the weight's device
    _, scale, _ = quantize_weight(weight)
    res = adaround(weight, scale, linear_fn, x, iterations=300, batch_size=64)
    assert res.codes.device.type == "cuda"
    check_result(res, weight, scale)
    assert res.loss < 0.8 * res.loss_nearest


@pytest.mark.parametrize("change,match", [
    (dict(scale=torch.full((7,), 0.01)), "scale must have one entry per output channel"),
    (dict(scale=torch.full((8, 1), 0.01)), "scale must have one entry per output channel"),
    (dict(scale=torch.tensor([0.01] * 7 + [0.0])), "finite and positive"),
    (dict(scale=torch.tensor([0.01] * 7 + [-1.0])), "finite and positive"),
    (dict(inputs=torch.zeros(0, 16)), "inputs are empty"),
    (dict(bits=1), "bits=1"),
    (dict(bits=9), "bits=9"),
    (dict(weight=torch.randn(16)), "weight must be a float tensor"),
    (dict(weight=torch.ones(8, 16, dtype=torch.int8)), "weight must be a float tensor"),
    (dict(iterations=-1), "iterations=-1"),
    (dict(batch_size=0), "batch_size=0"),
    (dict(warmup=1.5), "warmup=1.5"),
])
def test_bad_input_names_the_problem(change, match):
    args = dict(weight=torch.randn(8, 16), scale=torch.full((8,), 0.01), inputs=torch.randn(4, 16))
    options = {k: change.pop(k) for k in list(change) if k not in args}
    args.update(change)
    with pytest.raises(ConfigError, match=match) as err:
        adaround(args["weight"], args["scale"], linear_fn, args["inputs"], **options)
    assert isinstance(err.value, ValueError)


def _small_cnn():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1, groups=8),
                         nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 5)).eval()


def test_static_quant_with_adaround_rounds_every_layer_within_one_step_of_nearest():
    from slimtorch.summary import last_summary

    g = torch.Generator().manual_seed(1)
    base = torch.randn(64, 3, 1, 1, generator=g)  # smooth, correlated images: rounding choices matter
    data = [(base[i:i + 16] + 0.1 * torch.randn(16, 3, 6, 6, generator=g)) for i in range(0, 64, 16)]
    nearest = st.quantize(_small_cnn(), st.StaticQuant(), data=data)
    model = st.quantize(_small_cnn(), st.StaticQuant(adaround=True, adaround_seconds=20), data=data)
    rounded = last_summary(model).details["adaround"]
    assert set(rounded) == {"0", "2", "5"}
    for name, row in rounded.items():
        assert row["loss"] <= row["loss_nearest"] and row["iterations"] > 0, name
        layer, near = model.get_submodule(name), nearest.get_submodule(name)
        assert torch.equal(layer.weight_scale, near.weight_scale)  # same grid, other rounding
        assert int((layer.qweight.int() - near.qweight.int()).abs().max()) <= 1
    assert any(row["loss"] < row["loss_nearest"] for row in rounded.values())
    assert not torch.equal(model[0].qweight, nearest[0].qweight)
    x = data[0]
    with torch.no_grad():
        torch.testing.assert_close(model(x), _small_cnn()(x), atol=0.05, rtol=0)


def test_adaround_seconds_must_be_positive():
    with pytest.raises(ConfigError, match="adaround_seconds"):
        st.StaticQuant(adaround=True, adaround_seconds=0)
