"""DynamicQuantLinear: activations quantized per call (per row or per tensor) equal the float reference."""

import pytest
import torch
from torch import nn

from slimtorch.quant import kernels
from slimtorch.quant.formats import DynamicQuantLinear
from slimtorch.quant.ptq import quant_linear


@pytest.mark.parametrize("per_token", [True, False])
@pytest.mark.parametrize("rows", [1, 17])
def test_kernel_matches_reference(per_token, rows):
    lin = nn.Linear(128, 48)
    x = torch.randn(rows, 128)
    q = quant_linear(lin, mode="dynamic", per_token=per_token)
    assert type(q) is DynamicQuantLinear and q.mode == "dynamic" and q.per_token == per_token
    with torch.no_grad():
        out, ref = q(x), q.reference(x)
    torch.testing.assert_close(out, ref, atol=1e-4 * float(ref.abs().max()), rtol=1e-4)
    # and close to the float layer
    assert torch.nn.functional.cosine_similarity(out.flatten(), lin(x).detach().flatten(), 0) > 0.98


@pytest.mark.parametrize("rows", [1, 33])
def test_per_row_kernels_both_equal_reference(rows):
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
    # the race's choice is kept per power-of-two row bucket
    assert kernels.chosen(q._race_key(rows)) in ("int_mm_rows", "onednn_rows")


def test_per_token_is_recorded_and_rebuilt():
    q = quant_linear(nn.Linear(16, 8), mode="dynamic", per_token=False)
    args = q.manifest_args()
    assert args["per_token"] is False and "mode" not in args and "relu" not in args
    assert DynamicQuantLinear(**args).per_token is False
