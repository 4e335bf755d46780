"""The export twins as a whole: which twin each compressed layer gets, the swap in and out around an export, and
the output grids calibrated for int8 outputs (the twins' arithmetic is in tests/onnx/test_ops.py)."""

import pytest
import torch
from torch import nn

import slimtorch as st
from slimtorch.onnx.twins import (
    DequantLinear,
    DynamicLinear,
    FloatBinary,
    NBitsLinear,
    QDQConv2d,
    QDQLinear,
    calibrate_outputs,
    export_twins,
    twin_for,
)
from slimtorch.prune.sparse_linear import SparseLinear
from slimtorch.quant.binary.modules import BinaryLinear
from slimtorch.quant.formats import QuantConv2d
from slimtorch.quant.ptq import quant_linear


def _net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 32), nn.ReLU(),
                         nn.Linear(32, 4)).eval()


@pytest.mark.parametrize("make, twin_type", [
    (lambda: quant_linear(nn.Linear(64, 16), mode="static"), QDQLinear),
    (lambda: quant_linear(nn.Linear(64, 16), mode="dynamic"), DynamicLinear),
    (lambda: quant_linear(nn.Linear(64, 16), mode="weight_only", bits=4, group_size=32), NBitsLinear),
    (lambda: quant_linear(nn.Linear(64, 16), mode="weight_only", bits=8), DequantLinear),
    (lambda: quant_linear(nn.Linear(64, 16), mode="weight_only", bits=4, group_size=24), DequantLinear),
    (lambda: SparseLinear.from_linear(nn.Linear(64, 16)), nn.Linear),
    (lambda: BinaryLinear(64, 16), FloatBinary),
])
def test_each_compressed_layer_gets_its_twin(make, twin_type):
    assert type(twin_for(make())) is twin_type


def test_plain_layers_export_as_they_are():
    assert twin_for(nn.Linear(4, 4)) is None and twin_for(nn.ReLU()) is None


def test_export_twins_swaps_in_and_puts_every_original_back():
    model = _net()
    calib = [torch.randn(4, 3, 6, 6) for _ in range(3)]
    st.quantize(model, st.StaticQuant(), data=calib, example_inputs=calib[0])
    originals = {name: m for name, m in model.named_modules()}
    x = calib[0]
    with torch.no_grad():
        ref = model(x)
    model.train()
    with export_twins(model) as (swapped, names):
        assert swapped is model and not model.training
        assert set(names.values()) <= {"QDQConv2d", "QDQLinear"} and len(names) == 3
        assert isinstance(model.get_submodule(next(iter(names))), QDQConv2d | QDQLinear)
        with torch.no_grad():
            inside = model(x)
    # the twins compute what the layers compute, up to the int32 bias rounding (half a step of the next layer)
    torch.testing.assert_close(inside, ref, rtol=0, atol=1e-2 * float(ref.abs().max()))
    assert model.training and {name: m for name, m in model.named_modules()} == originals
    assert isinstance(model[0], QuantConv2d)


def test_output_grids_cover_each_static_layers_outputs():
    model = _net()
    calib = [torch.randn(4, 3, 6, 6) for _ in range(3)]
    st.quantize(model, st.StaticQuant(), data=calib, example_inputs=calib[0])
    grids = calibrate_outputs(model, calib)
    assert len(grids) == 3
    outs = {}
    hooks = [model.get_submodule(n).register_forward_hook(lambda m, a, o, n=n: outs.setdefault(n, []).append(o))
             for n in grids]
    with torch.no_grad():
        for x in calib:
            model(x)
    for h in hooks:
        h.remove()
    for name, (scale, zero_point) in grids.items():
        seen = torch.cat([o.flatten() for o in outs[name]])
        lo, hi = float(scale) * (0 - int(zero_point)), float(scale) * (255 - int(zero_point))
        assert lo <= float(seen.min()) + float(scale) and float(seen.max()) <= hi + float(scale)
    assert calibrate_outputs(_net(), calib) == {}  # no static layer: no grid
    with pytest.raises(st.DataError, match="yielded no batch"):
        calibrate_outputs(model, [])
