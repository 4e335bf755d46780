"""quant_sensitivity: per-layer output error, most sensitive first, model untouched."""

import copy
import dataclasses

import pytest
import torch
from torch import nn

import slimtorch as st
from slimtorch.errors import ConfigError
from slimtorch.search.sensitivity import relative_error


def test_relative_error_definition():
    ref = torch.tensor([3.0, 4.0])
    assert relative_error(ref, ref) == 0.0
    assert relative_error(ref, torch.zeros(2)) == pytest.approx(1.0)


def test_sensitivity_is_the_error_of_quantizing_each_layer_alone():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64))
    with torch.no_grad():
        model[2].weight[:3] *= 30  # heavier-tailed weights in layer 2
    before = {k: v.clone() for k, v in model.state_dict().items()}
    data = [torch.randn(8, 64) for _ in range(2)]
    cfg = st.WeightOnlyQuant(bits=4, group_size=64)
    result = st.quant_sensitivity(model, cfg, data)
    assert [r.error for r in result] == sorted((r.error for r in result), reverse=True)
    for r in result:  # the definition, by hand
        q = st.quantize(copy.deepcopy(model), dataclasses.replace(cfg, include=(r.layer,)))
        with torch.no_grad():
            expected = sum(relative_error(model(b), q(b)) for b in data) / len(data)
        assert r.error == pytest.approx(expected, rel=1e-6) and r.error > 0
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_sensitivity_static_on_a_small_cnn():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3),
                          nn.Flatten(), nn.Linear(8 * 6 * 6, 4)).eval()
    data = [torch.randn(4, 3, 8, 8) for _ in range(2)]
    result = st.quant_sensitivity(model, st.StaticQuant(), data)
    assert {r.layer for r in result} == {"0", "3", "5"} and all(0 < r.error < 0.01 for r in result)


def test_sensitivity_rejects_configs_without_include():
    with pytest.raises(ConfigError, match="include"):
        st.quant_sensitivity(nn.Linear(2, 2), st.StructuredPruning(), [torch.randn(1, 2)])
