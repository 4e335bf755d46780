"""measure_onnx / st.measure(runtime="onnxruntime"): the same Metrics, measured in ONNX Runtime."""

import copy

import pytest
import torch
from torch import nn

import slimtorch as st
from slimtorch.onnx.measure import onnx_param_counts
from slimtorch.onnx.runtime import OnnxModule, open_session, session_feed


def test_measure_matches_torch_counts(digits_mlp, tmp_path):
    model, data = digits_mlp
    ex = data.example_inputs(8)
    path = st.export_onnx(model, ex, tmp_path / "mlp.onnx")
    torch_m = st.measure(model, ex, eval_fn=data.evaluate, repeats=5, max_seconds=1)
    ort_m = st.measure(str(path), ex, eval_fn=data.evaluate, runtime="onnxruntime", repeats=5, max_seconds=1,
                       label="mlp")
    assert ort_m.runtime == "onnxruntime" and ort_m.label == "mlp" and ort_m.batch_size == 8
    assert ort_m.params == torch_m.params and ort_m.nonzero_params == torch_m.nonzero_params
    assert ort_m.macs == torch_m.macs == 8 * (64 * 1024 + 1024 * 1024 + 1024 * 10)
    assert ort_m.flops == 2 * ort_m.macs
    assert ort_m.size_bytes == path.stat().st_size
    assert ort_m.accuracy == pytest.approx(torch_m.accuracy, abs=1 / 359)
    assert ort_m.latency_ms > 0 and ort_m.latency_p90_ms >= ort_m.latency_ms
    assert ort_m.threads == torch.get_num_threads()


def test_measure_int4_counts_logical_weights(digits_mlp, tmp_path):
    model, data = digits_mlp
    q = copy.deepcopy(model)
    st.quantize(q, st.WeightOnlyQuant(bits=4, group_size=32))
    ex = data.example_inputs(1)
    ort_m = st.measure(q, ex, runtime="onnxruntime", repeats=5, max_seconds=1)  # a module: exported on the fly
    torch_m = st.measure(q, ex, repeats=5, max_seconds=1)
    assert ort_m.params == torch_m.params  # two 4-bit weights per packed byte, scales left out
    assert ort_m.macs == torch_m.macs
    assert ort_m.size_bytes < 0.2 * 4 * torch_m.params  # about 4.5 bits per weight, not 32


def test_conv_macs(tmp_path):
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, groups=1), nn.ReLU(), nn.Conv2d(8, 8, 3, groups=4))
    x = torch.randn(2, 3, 10, 10)
    path = st.export_onnx(model, x, tmp_path / "c.onnx")
    m = st.measure(str(path), x, runtime="onnxruntime", repeats=5, max_seconds=1)
    assert m.macs == st.measure(model, x, repeats=5, max_seconds=1).macs == 2 * (8 * 100 * 27 + 8 * 64 * 18)


def test_onnx_module_and_feed(tmp_path):
    model = nn.Linear(5, 2)
    path = st.export_onnx(model, torch.randn(3, 5), tmp_path / "l.onnx")
    session = open_session(path, threads=1)
    assert session.get_session_options().intra_op_num_threads == 1
    x = torch.randn(7, 5)
    assert list(session_feed(session, x)) == [session.get_inputs()[0].name]
    torch.testing.assert_close(OnnxModule(path)(x), model(x), atol=1e-5, rtol=1e-5)
    params, nonzero = onnx_param_counts(__import__("onnx").load(str(path)))
    assert params == 12 and nonzero == int((model.weight != 0).sum() + (model.bias != 0).sum())
    with pytest.raises(st.DataError, match="missing"):
        session_feed(session, {"other": x})


def test_unloadable_file(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a protobuf")
    with pytest.raises(st.ArtifactError, match="cannot load"):
        st.measure(str(bad), torch.randn(1, 2), runtime="onnxruntime")
