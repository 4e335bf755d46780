"""Quantized layers: every integer kernel equals its dequantized float reference; save/load is exact."""

import copy

import pytest
import torch
from torch import nn

import slimtorch as st
from slimtorch.quant import kernels
from slimtorch.quant.ptq import quant_conv2d, quant_linear


def _static(layer: nn.Module, x: torch.Tensor) -> nn.Module:
    q = quant_conv2d(layer) if isinstance(layer, nn.Conv2d) else quant_linear(layer, mode="static")
    lo, hi = float(x.min()), float(x.max())
    q.input_scale = torch.tensor((hi - min(lo, 0)) / 255)
    q.input_zero_point = torch.tensor(round(-min(lo, 0) / float(q.input_scale)), dtype=torch.int32)
    return q


@pytest.mark.parametrize("groups,cin,cout,stride", [(1, 8, 16, 1), (2, 8, 16, 2), (8, 8, 8, 1)])
def test_conv_kernel_matches_reference(groups, cin, cout, stride):
    conv = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, groups=groups)
    x = torch.randn(4, cin, 9, 9)
    q = _static(conv, x)
    with torch.no_grad():
        out, ref = q(x), q.reference(x)
    assert torch.allclose(out, ref, atol=1e-4 * ref.abs().max())
    q.relu = True
    q._cache = {}
    with torch.no_grad():
        assert torch.allclose(q(x), torch.relu(ref), atol=1e-4 * ref.abs().max())


@pytest.mark.parametrize("mode,bits,group", [("static", 8, 0), ("dynamic", 8, 0), ("weight_only", 8, 0),
                                              ("weight_only", 4, 32), ("weight_only", 4, 64), ("weight_only", 3, 16)])
@pytest.mark.parametrize("rows", [1, 17])
def test_linear_kernel_matches_reference(mode, bits, group, rows):
    lin = nn.Linear(128, 48)
    x = torch.randn(rows, 128)
    q = _static(lin, x) if mode == "static" else quant_linear(lin, mode=mode, bits=bits, group_size=group or None)
    with torch.no_grad():
        out, ref = q(x), q.reference(x)
    bf16 = "bf16" in "".join(kernels._CHOICE.values())  # a bfloat16-activation kernel won the race
    tol = 2e-2 if mode == "weight_only" and bf16 else 1e-4
    assert torch.allclose(out, ref, atol=tol * ref.abs().max(), rtol=tol)
    # and close to the float layer
    assert torch.nn.functional.cosine_similarity(out.flatten(), lin(x).detach().flatten(), 0) > 0.98


@pytest.mark.parametrize("choice,dtype", [("int8pack_mm_bf16", torch.bfloat16), ("int8pack_mm", torch.float32)])
def test_input_rounding_names_the_dtype_the_chosen_kernel_multiplies_in(choice, dtype):
    # what ONNX's agreement check nudges a weight-only layer's input by (the model's noise floor)
    q = quant_linear(nn.Linear(32, 8), mode="weight_only", bits=8)
    x = torch.randn(5, 3, 32)
    kernels._CHOICE[q._weight_only_key(15)] = choice
    assert q.input_rounding(x) == dtype
    assert quant_linear(nn.Linear(32, 8), mode="dynamic").input_rounding(x) == torch.float32


@pytest.mark.parametrize("in_features", [2, 40, 440])
def test_weight_only_int8_runs_on_input_widths_not_a_multiple_of_16(in_features):
    # torch 2.13's bfloat16 _weight_int8pack_mm segfaults there (Swin v2's Linear(2, 512), RegNet's 440-wide head)
    lin = nn.Linear(in_features, 10)
    q = quant_linear(lin, mode="weight_only", bits=8)
    x = torch.randn(3, in_features)
    with torch.no_grad():
        torch.testing.assert_close(q(x), q.reference(x), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("in_features,group", [(200, 64), (40, 32), (24, 128)])
def test_int4_kernel_takes_a_short_last_group(in_features, group):
    # the packed int4 kernel reads whole groups: the layer fills the last one with zero codes and zero inputs
    lin = nn.Linear(in_features, 48)
    q = quant_linear(lin, mode="weight_only", bits=4, group_size=group)
    assert q.weight_scale.shape == (48, -(-in_features // group))
    x = torch.randn(17, 2 * in_features)[:, ::2]  # strided, as a sliced activation comes
    with torch.no_grad():
        out, ref = q(x), q.reference(x)
    assert "int4pack" in kernels._CHOICE[("weight_only", 4, group, in_features, 48, 17)]
    torch.testing.assert_close(out, ref, atol=2e-2 * float(ref.abs().max()), rtol=2e-2)


@pytest.mark.parametrize("rows", [1, 33])
def test_per_row_dynamic_kernels_both_equal_reference(rows):
    lin = nn.Linear(96, 40, bias=False)
    q = quant_linear(lin, mode="dynamic")
    x = torch.randn(rows, 96) * 3
    ref = q.reference(x)
    packed = torch.ops.onednn.qlinear_prepack(q.int_weight(), None)
    via_int_mm = kernels.int_mm_rows(*kernels.quantize_rows(x), q.int_weight().t().contiguous(), q.weight_scale)
    via_onednn = kernels.onednn_rows(*kernels.quantize_rows(x, unsigned=True), packed, q.weight_scale)
    # oneDNN's uint8 codes reach 255, which CPUs without VNNI multiply with int16 saturation: not raced there
    for out in (via_int_mm,) if kernels.U8S8_SATURATES else (via_int_mm, via_onednn):
        assert torch.allclose(out, ref, atol=1e-5 * ref.abs().max(), rtol=1e-5)
    with torch.no_grad():
        assert torch.allclose(q(x), ref, atol=1e-5 * ref.abs().max(), rtol=1e-5)


def test_static_layers_take_what_this_cpus_int8_kernels_multiply_exactly(monkeypatch, caplog):
    # CPUs without VNNI sum uint8 x int8 products in int16 with saturation: 7-bit activation codes there
    lin, x = nn.Linear(256, 48), torch.randn(17, 256) * 3
    this_cpu = kernels.U8S8_SATURATES
    for saturates, bits in ((False, 8), (True, 7)):
        monkeypatch.setattr(kernels, "U8S8_SATURATES", saturates)
        q = st.quantize(nn.Sequential(copy.deepcopy(lin)), st.StaticQuant(), data=[x])[0]
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


def test_int4_is_packed_and_round_trips_through_save(tmp_path):
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 16))
    st.quantize(model, st.WeightOnlyQuant(bits=4, group_size=32))
    assert model[0].qweight.dtype == torch.uint8 and model[0].qweight.shape == (32, 32)
    path = st.save(model, tmp_path / "m")
    fresh = st.load(path, nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 16)))
    x = torch.randn(3, 64)
    assert torch.equal(fresh[0].qweight, model[0].qweight)
    with torch.no_grad():
        assert torch.equal(fresh(x), model(x))
    assert fresh[0].weight_counts() == (64 * 32 + 32, int(torch.count_nonzero(model[0].dequantized_weight())) + 32)
