import pytest
import torch
import torch.nn.functional as F

from slimtorch.quant.binary.kernels import byte_table, lut_index, lut_matmul, xnor_matmul
from slimtorch.quant.binary.math import sign
from slimtorch.quant.binary.modules import BinaryConv2d, BinaryLinear
from slimtorch.quant.binary.pack import pack_bits, pack_signs, unpack_signs

MODES = [{}, {"ternary": True}, {"activations": True}]


@pytest.mark.parametrize("k", [1, 5, 8, 13, 64, 100])
@pytest.mark.parametrize("rows", [1, 3, 40])
def test_lookup_table_product_equals_the_unpacked_product(k, rows):
    gen = torch.Generator().manual_seed(k * 100 + rows)
    w, x = torch.randn(7, k, generator=gen), torch.randn(rows, k, generator=gen)
    packed = pack_signs(w)
    expected = x.double() @ unpack_signs(packed, k).double().t()
    got = lut_matmul(x, lut_index(packed), byte_table(True))
    assert torch.allclose(got.double(), expected, atol=1e-5 * k)
    zero_one = lut_matmul(x, lut_index(packed), byte_table(False))  # bits read as 1/0
    assert torch.allclose(zero_one.double(), x.double() @ (w >= 0).double().t(), atol=1e-5 * k)


@pytest.mark.parametrize("k", [1, 7, 9, 64, 130])
def test_xnor_popcount_equals_the_sign_dot_product_exactly(k):
    gen = torch.Generator().manual_seed(k)
    w, x = torch.randn(5, k, generator=gen), torch.randn(6, k, generator=gen)
    dots = xnor_matmul(pack_signs(x), pack_signs(w), k)
    assert dots.dtype == torch.int32 and torch.equal(dots.float(), sign(x) @ sign(w).t())
    valid = torch.rand(6, k, generator=gen) < 0.7  # padded (invalid) inputs count as 0
    dots = xnor_matmul(pack_signs(x), pack_signs(w), k, pack_bits(valid))
    assert torch.equal(dots.float(), (sign(x) * valid) @ sign(w).t())


@pytest.mark.parametrize("mode", MODES, ids=["binary", "ternary", "xnor"])
@pytest.mark.parametrize("batch", [1, 33])
def test_packed_linear_equals_the_dequantized_float_layer(mode, batch):
    torch.manual_seed(0)
    linear = torch.nn.Linear(37, 11)
    shift = torch.randn(37) * 0.1
    layer = BinaryLinear.from_float(linear, input_shift=shift, **mode)
    x = torch.randn(batch, 37)
    xin = sign(x - shift) if mode.get("activations") else x
    expected = F.linear(xin, layer.dequantized_weight(), linear.bias)
    for kernel in ("packed", "unpacked", "auto"):
        layer.kernel = kernel
        assert torch.allclose(layer(x), expected, atol=1e-5), kernel
    assert layer(x.reshape(batch, 1, 37)).shape == (batch, 1, 11)  # leading dimensions are kept


@pytest.mark.parametrize("mode", MODES, ids=["binary", "ternary", "xnor"])
@pytest.mark.parametrize("geometry", [dict(padding=1), dict(stride=2, padding=(0, 1)), dict(dilation=2, padding=2)])
def test_packed_conv_equals_the_dequantized_float_conv(mode, geometry):
    torch.manual_seed(1)
    conv = torch.nn.Conv2d(5, 6, 3, bias=True, **geometry)
    shift = torch.randn(5) * 0.1
    layer = BinaryConv2d.from_float(conv, input_shift=shift, **mode)
    x = torch.randn(2, 5, 7, 6)
    xin = sign(x - shift.reshape(1, -1, 1, 1)) if mode.get("activations") else x
    weight = layer.dequantized_weight().reshape(conv.weight.shape)
    expected = F.conv2d(xin, weight, conv.bias, conv.stride, conv.padding, conv.dilation)
    for kernel in ("packed", "unpacked"):
        layer.kernel = kernel
        assert torch.allclose(layer(x), expected, atol=1e-5), kernel


def test_weight_counts_report_logical_weights_and_ternary_zeros():
    linear = torch.nn.Linear(20, 4, bias=False)
    assert BinaryLinear.from_float(linear).weight_counts() == (80, 80)
    layer = BinaryLinear.from_float(linear, ternary=True)
    assert layer.weight_counts() == (80, int((layer.codes() != 0).sum()))
    assert 0 < layer.weight_counts()[1] < 80
    assert BinaryLinear.from_float(torch.nn.Linear(20, 4)).weight_counts() == (84, 84)  # with the bias


def test_lookup_indices_follow_a_reloaded_state():
    a, b = BinaryLinear.from_float(torch.nn.Linear(16, 3)), BinaryLinear.from_float(torch.nn.Linear(16, 3))
    x = torch.randn(1, 16)
    a.kernel = "packed"
    a(x)  # builds the cached gather indices
    a.load_state_dict(b.state_dict())
    assert torch.allclose(a(x), F.linear(x, b.dequantized_weight(), b.bias), atol=1e-5)


def test_unsupported_layers_are_refused_with_the_reason():
    with pytest.raises(ValueError, match="groups=1"):
        BinaryConv2d.from_float(torch.nn.Conv2d(4, 4, 3, groups=2))
    with pytest.raises(ValueError, match="ternary"):
        BinaryLinear(4, 4, ternary=True, activations=True)


def test_auto_kernel_uses_packed_bits_for_few_rows_only():
    wide = BinaryLinear.from_float(torch.nn.Linear(64, 1024))
    assert wide.use_packed(1) and wide.use_packed(8) and not wide.use_packed(64)
    narrow = BinaryConv2d.from_float(torch.nn.Conv2d(128, 128, 3))
    assert narrow.use_packed(1) and not narrow.use_packed(16)  # tables cost more than the bits for few outputs
    xnor = BinaryLinear.from_float(torch.nn.Linear(64, 1024), activations=True)
    assert xnor.use_packed(8) and not xnor.use_packed(9)
    xnor.kernel = "packed"
    assert xnor.use_packed(10_000)
