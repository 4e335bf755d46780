"""torch.compile runs every quantized layer, with and without inductor's freezing, and matches eager.

Inductor lowers oneDNN's int8 operators only as frozen constants; without freezing (and for kernels it
miscompiles) the layers run outside the graph instead of failing to compile.
"""

import copy

import pytest
import torch
import torch._inductor.config as inductor_config
from torch import nn

import slimtorch as st

pytestmark = pytest.mark.slow


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 32)).eval()


def _cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.Conv2d(16, 16, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten()).eval()


def _quantized(kind: str) -> tuple[nn.Module, torch.Tensor]:
    x, xc = torch.randn(16, 64), torch.randn(2, 3, 12, 12)
    if kind == "dynamic":
        return st.quantize(_mlp(), st.DynamicQuant()), x
    if kind == "dynamic_per_tensor":
        return st.quantize(_mlp(), st.DynamicQuant(activations="tensor")), x
    if kind == "weight_only_int4":
        return st.quantize(_mlp(), st.WeightOnlyQuant(bits=4, group_size=32)), x
    if kind == "static_linear":
        return st.quantize(_mlp(), st.StaticQuant(calibration_batches=2), data=[x, x]), x
    return st.quantize(_cnn(), st.StaticQuant(calibration_batches=2), data=[xc, xc]), xc


@pytest.mark.parametrize("freezing", [False, True])
@pytest.mark.parametrize("kind", ["dynamic", "dynamic_per_tensor", "weight_only_int4", "static_linear",
                                  "static_conv"])
def test_compiled_quantized_model_matches_eager(kind, freezing):
    model, x = _quantized(kind)
    torch._dynamo.reset()
    with torch.inference_mode(), inductor_config.patch(freezing=freezing):
        eager = model(x)  # also races and packs the kernels, so frozen graphs can trace them
        breaks = torch._dynamo.explain(model)(x).graph_break_count
        compiled = torch.compile(model)(x)
    # fused epilogues reorder float operations: agreement to float rounding of the int8 result
    torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-4)
    traced = freezing and kind in ("dynamic", "static_linear", "static_conv")  # else each runs outside the graph
    assert (breaks == 0) == traced


def test_deepcopy_after_a_forward_drops_packed_kernels_and_matches():
    model, x = _quantized("static_conv")
    with torch.inference_mode():
        before = model(x)
        twin = copy.deepcopy(model)  # oneDNN's packed weights cannot be copied: the copy packs its own
        torch.testing.assert_close(twin(x), before, rtol=0, atol=0)
