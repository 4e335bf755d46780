"""Static int8 layers (StaticQuantLinear, QuantConv2d): the oneDNN kernels equal their float reference."""

import copy

import pytest
import torch
from torch import nn

import slimtorch as st
from slimtorch.quant import kernels
from slimtorch.quant.formats import QuantConv2d, StaticQuantLinear
from slimtorch.quant.ptq import quant_conv2d, quant_linear


def _static(layer: nn.Module, x: torch.Tensor, relu: bool = False) -> nn.Module:
    """The static twin of ``layer`` with an input grid covering ``x`` in the codes this CPU multiplies exactly."""
    q = quant_conv2d(layer, relu=relu) if isinstance(layer, nn.Conv2d) else quant_linear(layer, mode="static",
                                                                                          relu=relu)
    bits = kernels.activation_bits()
    lo, hi = float(x.min()), float(x.max())
    q.input_bits = bits
    q.input_scale = torch.tensor((hi - min(lo, 0)) / (2**bits - 1))
    q.input_zero_point = torch.tensor(round(-min(lo, 0) / float(q.input_scale)), dtype=torch.int32)
    return q


@pytest.mark.parametrize("groups,cin,cout,stride", [(1, 8, 16, 1), (2, 8, 16, 2), (8, 8, 8, 1)])
def test_conv_kernel_matches_reference(groups, cin, cout, stride):
    conv = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, groups=groups)
    x = torch.randn(4, cin, 9, 9)
    q = _static(conv, x)
    assert type(q) is QuantConv2d and q.mode == "static"
    with torch.no_grad():
        out, ref = q(x), q.reference(x)
    assert torch.allclose(out, ref, atol=1e-4 * ref.abs().max())
    q.relu = True
    q._cache = {}
    with torch.no_grad():
        assert torch.allclose(q(x), torch.relu(ref), atol=1e-4 * ref.abs().max())


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("rows", [1, 17])
def test_linear_kernel_matches_reference(rows, relu):
    lin = nn.Linear(128, 48)
    x = torch.randn(rows, 3, 128)
    q = _static(lin, x, relu=relu)
    assert type(q) is StaticQuantLinear and q.mode == "static" and q.relu == relu
    with torch.no_grad():
        out, ref, want = q(x), q.reference(x), lin(x)
    assert out.shape == (rows, 3, 48)
    torch.testing.assert_close(out, ref, atol=1e-4 * float(ref.abs().max()), rtol=1e-4)
    # and close to the float layer: 8-bit inputs and weights
    want = torch.relu(want) if relu else want
    assert torch.nn.functional.cosine_similarity(out.flatten(), want.flatten(), 0) > 0.98


def test_set_input_grid_puts_the_bias_on_the_int32_grid_of_the_product():
    lin = nn.Linear(32, 8)
    q = quant_linear(lin, mode="static")
    scale, zero = torch.tensor(0.05), torch.tensor(100, dtype=torch.int32)
    q.set_input_grid(scale, zero, 7)
    steps = q.bias / (scale * q.weight_scale)
    assert q.input_bits == 7 and torch.equal(q.input_zero_point, zero)
    torch.testing.assert_close(steps, steps.round(), atol=1e-3, rtol=0)
    # the bias moves by at most half a step
    assert bool(((q.bias - lin.bias.detach()).abs() <= 0.5 * scale * q.weight_scale + 1e-6).all())
    assert q.manifest_args()["input_bits"] == 7


def test_static_layers_take_what_this_cpus_int8_kernels_multiply_exactly(monkeypatch, caplog):
    # CPUs without VNNI sum uint8 x int8 products in int16 with saturation: 7-bit activation codes there
    lin, x = nn.Linear(256, 48), torch.randn(17, 256) * 3
    this_cpu = kernels.U8S8_SATURATES
    for saturates, bits in ((False, 8), (True, 7)):
        monkeypatch.setattr(kernels, "U8S8_SATURATES", saturates)
        q = st.quantize(nn.Sequential(copy.deepcopy(lin)), st.StaticQuant(), data=[x])[0]
        assert isinstance(q, StaticQuantLinear)
        assert q.input_bits == bits and int(q.input_zero_point) <= 2**bits - 1
        if saturates or not this_cpu:  # 8-bit codes on a CPU without VNNI: what this test is about, below
            with torch.no_grad():
                ref = q.reference(x)
                torch.testing.assert_close(q(x), ref, atol=1e-4 * float(ref.abs().max()), rtol=1e-4)
    # a layer calibrated with 8-bit codes, run where they would saturate: its float reference, said in the log
    monkeypatch.setattr(kernels, "U8S8_SATURATES", False)
    q8 = st.quantize(nn.Sequential(copy.deepcopy(lin)), st.StaticQuant(), data=[x])[0]
    monkeypatch.setattr(kernels, "U8S8_SATURATES", True)
    with torch.no_grad():
        torch.testing.assert_close(q8(x), q8.reference(x))
    assert "cannot multiply exactly" in caplog.text


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_quantize_uint8_rounds_half_even_after_the_zero_point(layout):
    # how the static layers quantize their input (kernels.quantize_uint8)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 5, 7, 9, generator=g) * 4
    x[0, 0, 0, :6] = torch.tensor([0.5, 1.5, 2.5, -0.5, -1.5, 1e6]) * 0.03  # ties and a clipped value
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    q = kernels.quantize_uint8(x, 0.03, 117)
    inv = torch.tensor(1 / 0.03, dtype=torch.float32)
    assert q.dtype == torch.uint8 and q.stride() == x.stride()
    assert torch.equal(q, torch.clamp(torch.round(x * inv + 117), 0, 255).to(torch.uint8))
    # rounding after the zero point is added: ties differ from round-then-add by one code, nothing else does
    round_first = torch.clamp(torch.round(x * inv) + 117, 0, 255).to(torch.uint8)
    assert (q.int() - round_first.int()).abs().max() <= 1
    assert torch.equal(q.flatten()[6:], round_first.flatten()[6:])
