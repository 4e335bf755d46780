import copy

import torch
from torch import nn

import slimtorch as st
from slimtorch.measure.flops import count_flops


def test_single_linear_layer():
    assert count_flops(nn.Linear(64, 32), torch.randn(8, 64)) == 2 * 8 * 64 * 32


def test_integer_kernels_count_like_their_float_layers():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(16 * 8 * 8, 32)).eval()
    x = torch.randn(4, 3, 8, 8)
    float_flops = count_flops(model, x)
    for cfg, data in ((st.StaticQuant(calibration_batches=1), [x]), (st.DynamicQuant(), None),
                      (st.WeightOnlyQuant(bits=8, group_size=None), None)):
        quantized = st.quantize(copy.deepcopy(model), cfg, data=data)
        with torch.inference_mode():
            quantized(x)  # the first call picks and packs kernels
        assert count_flops(quantized, x) == float_flops, cfg
