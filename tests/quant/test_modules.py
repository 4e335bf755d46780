"""The common base of the quantized Linear formats: one class per format, a fixed ``mode``, shared buffers,
weight readers and forward preamble (empty rows, other dtypes), and the kernel cache."""

import copy

import pytest
import torch
from torch import nn

from slimtorch.quant.formats import FORMATS
from slimtorch.quant.modules import QuantLinear
from slimtorch.quant.ptq import quant_linear

#: one layer per format (the int4 one packed), built as st.quantize builds them
KINDS = {"static": {}, "dynamic": {}, "dynamic_tensor": {"per_token": False}, "int8": {"bits": 8},
         "int4": {"bits": 4, "group_size": 16}}


def _layer(kind: str, lin: nn.Linear) -> QuantLinear:
    mode = {"dynamic_tensor": "dynamic", "int8": "weight_only", "int4": "weight_only"}.get(kind, kind)
    q = quant_linear(lin, mode=mode, **KINDS[kind])
    if mode == "static":
        q.set_input_grid(torch.tensor(6 / 127), torch.tensor(64, dtype=torch.int32), 7)  # inputs in [-3, 3]
    return q


@pytest.mark.parametrize("kind", KINDS)
def test_every_format_is_a_quant_linear_whose_mode_is_fixed(kind):
    q = _layer(kind, nn.Linear(32, 16))
    assert isinstance(q, QuantLinear) and type(q) is FORMATS[q.mode] and type(q).mode == q.mode
    with pytest.raises(AttributeError, match="fixed by the class"):
        q.mode = "static" if q.mode != "static" else "dynamic"
    assert f"mode={q.mode}" in repr(q)


def test_the_base_itself_is_not_a_layer():
    with pytest.raises(TypeError, match="common base"):
        QuantLinear(32, 16)


@pytest.mark.parametrize("kind", KINDS)
def test_manifest_args_rebuild_an_empty_twin_that_loads_the_same_layer(kind):
    q = _layer(kind, nn.Linear(40, 24))
    args = q.manifest_args()
    assert "mode" not in args  # the class says the format
    twin = type(q)(**args)
    assert {k: (v.shape, v.dtype) for k, v in twin.state_dict().items()} == {
        k: (v.shape, v.dtype) for k, v in q.state_dict().items()}
    twin.load_state_dict(q.state_dict())
    x = torch.randn(5, 40)
    with torch.no_grad():
        torch.testing.assert_close(twin(x), q(x), rtol=0, atol=0)


@pytest.mark.parametrize("kind", KINDS)
def test_weights_read_back_as_int8_codes_and_their_float_values(kind):
    lin = nn.Linear(40, 24)
    q = _layer(kind, lin)
    w = q.int_weight()
    bits = KINDS[kind].get("bits", 8)
    assert w.dtype == torch.int8 and w.shape == (24, 40)
    assert int(w.min()) >= -(2 ** (bits - 1)) and int(w.max()) <= 2 ** (bits - 1) - 1
    assert q.qweight.dtype == (torch.uint8 if kind == "int4" else torch.int8)
    # the dequantized weight is the float weight to half a step of its group's scale
    step = q.weight_scale.repeat_interleave(q.group_size, dim=1)[:, :40] if q.group_size else q.weight_scale[:, None]
    assert bool(((q.dequantized_weight() - lin.weight.detach()).abs() <= step / 2 + 1e-6).all())
    nonzero = int(torch.count_nonzero(q.dequantized_weight())) + int(torch.count_nonzero(q.bias))
    assert q.weight_counts() == (24 * 40 + 24, nonzero)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_the_forward_preamble_empty_rows_and_other_dtypes(kind, dtype):
    lin = nn.Linear(32, 16)
    q = _layer(kind, lin)
    assert q(torch.randn(0, 32)).shape == (0, 16) and q(torch.randn(2, 0, 32)).shape == (2, 0, 16)
    x = torch.randn(3, 4, 32).clamp(-3, 3)
    with torch.no_grad():
        out, ref = q(x.to(dtype)), q.reference(x.to(dtype))
        single = q(x[0, 0])  # a single vector [in]
    # computed in float32 inside, returned in the input's dtype: its rounding is the tolerance
    assert out.dtype == dtype and out.shape == (3, 4, 16) and single.shape == (16,)
    torch.testing.assert_close(out.float(), ref, atol=2e-2 * float(ref.abs().max()), rtol=2e-2)
    assert q.input_rounding(x) == torch.float32 or kind in ("int8", "int4")


def test_new_weights_and_copies_drop_the_packed_kernels():
    x = torch.randn(5, 32)
    a, b = _layer("dynamic", nn.Linear(32, 16)), _layer("dynamic", nn.Linear(32, 16))
    with torch.no_grad():
        want = b(x)
        a(x)
        assert a._cache and not copy.deepcopy(a)._cache  # oneDNN's packed tensors cannot be copied
        a.load_state_dict(b.state_dict())
        assert not a._cache
        torch.testing.assert_close(a(x), want, rtol=0, atol=0)
