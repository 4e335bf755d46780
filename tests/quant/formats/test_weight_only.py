"""WeightOnlyQuantLinear: int8 and packed int4 weights; every raced kernel equals the float reference."""

import pytest
import torch
from torch import nn

import slimtorch as st
from slimtorch.quant import kernels
from slimtorch.quant.formats import WeightOnlyQuantLinear
from slimtorch.quant.ptq import quant_linear


@pytest.mark.parametrize("bits,group", [(8, 0), (4, 32), (4, 64), (3, 16)])
@pytest.mark.parametrize("rows", [1, 17])
def test_kernel_matches_reference(bits, group, rows):
    lin = nn.Linear(128, 48)
    x = torch.randn(rows, 128)
    q = quant_linear(lin, mode="weight_only", bits=bits, group_size=group or None)
    assert type(q) is WeightOnlyQuantLinear and q.mode == "weight_only"
    with torch.no_grad():
        out, ref = q(x), q.reference(x)
    bf16 = "bf16" in (kernels.chosen(q._race_key(rows)) or "")  # a bfloat16-activation kernel won the race
    tol = 2e-2 if bf16 else 1e-4
    assert torch.allclose(out, ref, atol=tol * ref.abs().max(), rtol=tol)
    # and close to the float layer
    assert torch.nn.functional.cosine_similarity(out.flatten(), lin(x).detach().flatten(), 0) > 0.98


@pytest.mark.parametrize("choice,dtype", [("int8pack_mm_bf16", torch.bfloat16), ("int8pack_mm", torch.float32)])
def test_input_rounding_names_the_dtype_the_chosen_kernel_multiplies_in(choice, dtype):
    # what ONNX's agreement check nudges a weight-only layer's input by (the model's noise floor)
    q = quant_linear(nn.Linear(32, 8), mode="weight_only", bits=8)
    x = torch.randn(5, 3, 32)
    kernels._CHOICE[q._race_key(15)] = choice
    assert q.input_rounding(x) == dtype


@pytest.mark.parametrize("in_features", [2, 40, 440])
def test_int8_runs_on_input_widths_not_a_multiple_of_16(in_features):
    # torch 2.13's bfloat16 _weight_int8pack_mm segfaults there (Swin v2's Linear(2, 512), RegNet's 440-wide head)
    lin = nn.Linear(in_features, 10)
    q = quant_linear(lin, mode="weight_only", bits=8)
    x = torch.randn(3, in_features)
    with torch.no_grad():
        torch.testing.assert_close(q(x), q.reference(x), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("kernel,tol", [("int4pack_mm", 1e-4), ("int4pack_mm_bf16", 2e-2)])
@pytest.mark.parametrize("in_features,group", [(200, 64), (40, 32), (24, 128)])
def test_int4_kernel_takes_a_short_last_group(in_features, group, kernel, tol, monkeypatch):
    # the packed int4 kernel reads whole groups: the layer fills the last one with zero codes and zero inputs
    lin = nn.Linear(in_features, 48)
    q = quant_linear(lin, mode="weight_only", bits=4, group_size=group)
    assert q.weight_scale.shape == (48, -(-in_features // group))
    # the kernel under test, whatever the race would pick on this (possibly busy) machine
    monkeypatch.setitem(kernels._CHOICE, q._race_key(17), kernel)
    x = torch.randn(17, 2 * in_features)[:, ::2]  # strided, as a sliced activation comes
    with torch.no_grad():
        out, ref = q(x), q.reference(x)
    torch.testing.assert_close(out, ref, atol=tol * float(ref.abs().max()), rtol=tol)


def test_int4_is_packed_and_round_trips_through_save(tmp_path):
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 16))
    st.quantize(model, st.WeightOnlyQuant(bits=4, group_size=32))
    assert model[0].qweight.dtype == torch.uint8 and model[0].qweight.shape == (32, 32)
    path = st.save(model, tmp_path / "m")
    fresh = st.load(path, nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 16)))
    x = torch.randn(3, 64)
    assert type(fresh[0]) is WeightOnlyQuantLinear and torch.equal(fresh[0].qweight, model[0].qweight)
    with torch.no_grad():
        assert torch.equal(fresh(x), model(x))
    assert fresh[0].weight_counts() == (64 * 32 + 32, int(torch.count_nonzero(model[0].dequantized_weight())) + 32)
