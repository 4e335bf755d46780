"""check_agreement: the numbers it reports and the tolerance it applies."""

import copy

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from torch import nn

import slimtorch as st
from slimtorch.onnx.check import TOLERANCES, compression_kind


@pytest.fixture()
def linear_file(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 10)).eval()
    return model, st.export_onnx(model, torch.randn(4, 16), tmp_path / "lin.onnx", check=False)


def test_float_agreement_is_tight(linear_file):
    model, path = linear_file
    report = st.check_agreement(model, path, torch.randn(64, 16))
    assert report.passed and report.kind == "float" and report.samples == 64
    assert report.max_abs_error < 1e-5 and report.cosine > 0.99999 and report.top1_agreement == 1.0
    assert report.tolerance == TOLERANCES["float"]
    assert "agree" in report.summary() and report.to_dict()["samples"] == 64


def test_data_loader_and_batches(linear_file):
    model, path = linear_file
    batches = [(torch.randn(8, 16), torch.zeros(8)) for _ in range(5)]
    report = st.check_agreement(model, path, batches, num_batches=3)
    assert report.samples == 24


def test_tampered_file_is_caught(linear_file, tmp_path):
    model, path = linear_file
    proto = onnx.load(str(path))
    for init in proto.graph.initializer:
        if init.name.endswith("weight"):
            w = numpy_helper.to_array(init).copy()
            w[0, 0] += 0.5  # one weight off: the first output drifts
            init.CopyFrom(numpy_helper.from_array(w, init.name))
    bad = tmp_path / "bad.onnx"
    onnx.save(proto, str(bad))
    with pytest.raises(st.UnsupportedModelError, match="DISAGREE.*max rel error"):
        st.check_agreement(model, bad, torch.randn(32, 16))
    report = st.check_agreement(model, bad, torch.randn(32, 16), raise_on_failure=False)
    assert not report.passed and report.max_abs_error > 1e-3
    loose = st.Tolerance(max_rel_error=1.0, min_cosine=0.0, min_top1=0.0)
    assert st.check_agreement(model, bad, torch.randn(32, 16), tolerance=loose).passed


def test_cosine_and_top1_by_hand(tmp_path):
    # a model whose export is exact, compared with an ONNX file of the negated model: cosine -1, no top-1 match
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 4))
    negated = copy.deepcopy(model)
    with torch.no_grad():
        negated[0].weight.neg_()
        negated[0].bias.neg_()
    path = st.export_onnx(negated, torch.randn(2, 6), tmp_path / "neg.onnx", check=False)
    x = torch.randn(10, 6)
    report = st.check_agreement(model, path, x, raise_on_failure=False)
    np.testing.assert_allclose(report.cosine, -1.0, atol=1e-6)
    assert report.top1_agreement == 0.0
    np.testing.assert_allclose(report.max_abs_error, 2 * model(x).abs().max().item(), rtol=1e-5)


def _bias_only(bias: list[float]) -> nn.Module:
    layer = nn.Linear(2, len(bias))
    with torch.no_grad():
        layer.weight.zero_()
        layer.bias.copy_(torch.tensor(bias))
    return layer


@pytest.mark.parametrize("torch_bias,onnx_bias,top1", [([1.0, 0.99999, -1.0], [1.0, 1.00001, -1.0], 1.0),
                                                      ([1.0, 0.5, -1.0], [0.5, 1.0, -1.0], 0.0)])
def test_top1_counts_a_near_tie_as_agreeing(tmp_path, torch_bias, onnx_bias, top1):
    # torch scores classes 0 and 1 within 1e-5 (float tolerance: 1e-4 of the largest score): ONNX Runtime picking
    # class 1 is a rounding flip, not a disagreement; a flip with a clear margin still is one
    path = st.export_onnx(_bias_only(onnx_bias), torch.randn(2, 2), tmp_path / "other.onnx", check=False)
    report = st.check_agreement(_bias_only(torch_bias), path, torch.randn(4, 2), raise_on_failure=False)
    assert report.top1_agreement == top1


def test_kind_follows_the_loosest_layer(digits_mlp):
    model, data = digits_mlp
    assert compression_kind(model) == "float"
    w = copy.deepcopy(model)
    st.quantize(w, st.WeightOnlyQuant(bits=8, group_size=None))
    assert compression_kind(w) == "weight_only"
    d = copy.deepcopy(model)
    st.quantize(d, st.DynamicQuant())
    assert compression_kind(d) == "int8"


def test_missing_file_and_wrong_inputs(linear_file, tmp_path):
    model, path = linear_file
    with pytest.raises(st.ArtifactError, match="does not exist"):
        st.check_agreement(model, tmp_path / "none.onnx", torch.randn(2, 16))
    with pytest.raises(st.DataError, match="expects 1 input"):
        st.check_agreement(model, path, (torch.randn(2, 16), torch.randn(2, 16)))


def _chaotic(layers: int = 20, gain: float = 3.0) -> nn.Module:
    """A deep tanh network with weights above the edge of chaos: float rounding grows layer after layer, so
    PyTorch and ONNX Runtime (which sum in other orders) miss the fixed 1e-4 float bound."""
    torch.manual_seed(0)
    body = []
    for _ in range(layers):
        layer = nn.Linear(64, 64)
        nn.init.normal_(layer.weight, std=gain / 8)
        body += [layer, nn.Tanh()]
    return nn.Sequential(*body, nn.Linear(64, 10)).eval()


def test_a_chaotic_model_agrees_within_its_own_noise_floor(tmp_path):
    model, x = _chaotic(), torch.randn(16, 64)
    path = st.export_onnx(model, x, tmp_path / "chaos.onnx", check=False)
    strict = st.check_agreement(model, path, x, tolerance=TOLERANCES["float"], raise_on_failure=False)
    assert strict.max_rel_error > TOLERANCES["float"].max_rel_error  # the fixed bound alone is missed
    floor = strict.noise_floor
    assert floor is not None and floor.max_rel_error >= strict.max_rel_error and strict.passed
    assert "noise floor" in strict.summary() and "within it" in strict.summary()
    # a weight off by 0.5 in the first layer stands far above the floor: still caught
    proto = onnx.load(str(path))
    first = next(i for i in proto.graph.initializer if numpy_helper.to_array(i).shape == (64, 64))
    w = numpy_helper.to_array(first).copy()
    w[0, 0] += 0.5
    first.CopyFrom(numpy_helper.from_array(w, first.name))
    bad = tmp_path / "bad.onnx"
    onnx.save(proto, str(bad))
    with pytest.raises(st.UnsupportedModelError, match="DISAGREE.*noise floor"):
        st.check_agreement(model, bad, x)


def test_noise_floor_is_measured_only_when_a_bound_is_missed(linear_file):
    model, path = linear_file
    assert st.check_agreement(model, path, torch.randn(8, 16)).noise_floor is None
