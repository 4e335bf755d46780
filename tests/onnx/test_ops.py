"""The export ops' PyTorch bodies compute what slimtorch's quantized layers compute (hypothesis), and the
export twins hold the same integers."""

import torch
from hypothesis import example, given, settings
from hypothesis import strategies as hs

from slimtorch.onnx.twins import DequantLinear, DynamicLinear, NBitsLinear, QDQLinear, twin_for
from slimtorch.quant.kernels import fake_dynamic
from slimtorch.quant.ptq import quant_linear


def _linear(seed: int, n_in: int, n_out: int) -> torch.nn.Linear:
    torch.manual_seed(seed)
    return torch.nn.Linear(n_in, n_out)


@settings(max_examples=25, deadline=None)
@given(seed=hs.integers(0, 10_000), rows=hs.integers(1, 6), per_token=hs.booleans(),
       scale=hs.floats(1e-3, 1e3))
@example(seed=72, rows=4, per_token=True, scale=5.0)  # x / scale and x * (127 / amax) round one code differently
def test_dynamic_op_equals_layer_reference(seed, rows, per_token, scale):
    layer = quant_linear(_linear(seed, 32, 8), mode="dynamic", per_token=per_token)
    x = torch.randn(rows, 32) * scale
    expected = torch.nn.functional.linear(fake_dynamic(x, per_token), layer.dequantized_weight(), layer.bias)
    torch.testing.assert_close(DynamicLinear(layer)(x), expected, rtol=1e-4, atol=1e-4 * scale)


@settings(max_examples=25, deadline=None)
@given(seed=hs.integers(0, 10_000), group=hs.sampled_from([16, 32, 64]), odd_bias=hs.booleans())
def test_nbits_op_reads_the_packed_layout(seed, group, odd_bias):
    layer = quant_linear(_linear(seed, 64, 16), mode="weight_only", bits=4, group_size=group)
    twin = twin_for(layer)
    assert isinstance(twin, NBitsLinear) and twin.blocks.shape == (16, 64 // group, group // 2)
    x = torch.randn(3, 64)
    torch.testing.assert_close(twin(x), layer.reference(x), rtol=1e-5, atol=1e-5)


@settings(max_examples=25, deadline=None)
@given(seed=hs.integers(0, 10_000), x_scale=hs.floats(1e-3, 0.1), zp=hs.integers(0, 255))
def test_static_op_equals_layer_reference_up_to_bias_rounding(seed, x_scale, zp):
    layer = quant_linear(_linear(seed, 32, 8), mode="static")
    layer.input_scale, layer.input_zero_point = torch.tensor(x_scale), torch.tensor(zp, dtype=torch.int32)
    twin = QDQLinear(layer)
    assert twin.qweight.dtype == torch.int8 and twin.x_zp.dtype == torch.uint8 and twin.bias_q.dtype == torch.int32
    x = torch.randn(5, 32)
    # the int32 bias on the scale x_scale * w_scale is off by at most half that scale
    bound = 0.5 * float((x_scale * layer.weight_scale).max()) + 1e-5
    torch.testing.assert_close(twin(x), layer.reference(x), rtol=0, atol=bound)


def test_group_weight_only_twin():
    layer = quant_linear(_linear(0, 24, 4), mode="weight_only", bits=8, group_size=8)
    twin = twin_for(layer)
    assert isinstance(twin, DequantLinear)
    x = torch.randn(2, 24)
    torch.testing.assert_close(twin(x), layer.reference(x), rtol=1e-5, atol=1e-5)
