"""export_onnx: every compression family exports, runs in ONNX Runtime and agrees with PyTorch."""

import copy

import onnx
import pytest
import torch
from torch import nn

import slimtorch as st
from slimtorch.lowrank.modules import Tucker2Conv2d
from slimtorch.onnx.runtime import OnnxModule, open_session
from slimtorch.quant.kernels import U8S8_SATURATES


def _ops(path, tmp_path, optimized=False):
    if optimized:  # the graph ONNX Runtime runs after its fusions
        target = str(tmp_path / "optimized.onnx")
        open_session(path, optimized_path=target)
        path = target
    return {n.op_type for n in onnx.load(str(path)).graph.node}


class TwoLayer(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(64, 128), nn.Linear(128, 10)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


def test_float_model_exports_with_dynamic_batch(tmp_path):
    model = TwoLayer().eval()
    path = st.export_onnx(model, torch.randn(1, 64), tmp_path / "m.onnx")
    dim0 = onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim[0]
    assert dim0.dim_param  # a named free batch dimension, not a fixed 1
    x = torch.randn(33, 64)
    torch.testing.assert_close(OnnxModule(path)(x), model(x), atol=1e-5, rtol=1e-5)
    assert model.training is False and isinstance(model.fc1, nn.Linear)


def test_static_batch_is_fixed(tmp_path):
    path = st.export_onnx(TwoLayer(), torch.randn(4, 64), tmp_path / "m.onnx", dynamic_batch=False)
    assert onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim[0].dim_value == 4


def test_training_mode_and_layers_are_restored(tmp_path, digits_mlp):
    model, data = digits_mlp
    q = copy.deepcopy(model)
    st.quantize(q, st.DynamicQuant())
    q.train()
    before = [type(m) for m in q.modules()]
    st.export_onnx(q, data.example_inputs(2), tmp_path / "q.onnx")
    assert q.training and [type(m) for m in q.modules()] == before


@pytest.mark.parametrize(
    "name, compress, fused_ops",
    [
        ("static", lambda m, d: st.quantize(m, st.StaticQuant(calibration_batches=2), data=d.calibration), {"QGemm"}),
        ("dynamic-tensor", lambda m, d: st.quantize(m, st.DynamicQuant(activations="tensor")),
         {"MatMulIntegerToFloat"} if U8S8_SATURATES else {"DynamicQuantizeMatMul"}),  # 7-bit codes spelled out
        ("dynamic-token", lambda m, d: st.quantize(m, st.DynamicQuant()), {"MatMulInteger"}),
        ("int4", lambda m, d: st.quantize(m, st.WeightOnlyQuant(bits=4, group_size=32)), {"MatMulNBits"}),
        pytest.param("int8-weight-only", lambda m, d: st.quantize(m, st.WeightOnlyQuant(bits=8, group_size=None)),
                     set(), marks=pytest.mark.slow),
        pytest.param("int4-odd-group", lambda m, d: st.quantize(m, st.WeightOnlyQuant(bits=4, group_size=8)), set(),
                     marks=pytest.mark.slow),
        ("unstructured", lambda m, d: st.prune(m, st.UnstructuredPruning(sparsity=0.8)), set()),
        pytest.param("lowrank", lambda m, d: st.decompose(m, st.LowRank(rank_ratio=0.3)), set(),
                     marks=pytest.mark.slow),
        ("binary", lambda m, d: st.quantize(m, st.Binarize()), set()),
    ],
)
def test_mlp_families_export_and_agree(name, compress, fused_ops, digits_mlp, tmp_path):
    model, data = digits_mlp
    m = copy.deepcopy(model)
    compress(m, data)
    path = st.export_onnx(m, data.example_inputs(1), tmp_path / f"{name}.onnx")  # check=True raises on mismatch
    report = st.check_agreement(m, path, data)
    assert report.passed and report.top1_agreement == 1.0 and report.samples > 300
    assert fused_ops <= _ops(path, tmp_path, optimized=True)
    # ONNX Runtime's accuracy equals PyTorch's on the test split
    assert abs(data.evaluate(OnnxModule(path)) - data.evaluate(m)) <= 1 / 359


@pytest.mark.parametrize("bits,op", [(4, "MatMulNBits"), (8, "Gemm")])
def test_weight_only_with_a_short_last_group_exports_and_agrees(bits, op, tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(40, 48), nn.ReLU(), nn.Linear(48, 16))  # widths 40 and 48, groups of 32
    st.quantize(model, st.WeightOnlyQuant(bits=bits, group_size=32))
    x = torch.randn(6, 40)
    path = st.export_onnx(model, x, tmp_path / "m.onnx")  # check=True raises on disagreement
    assert op in _ops(path, tmp_path)
    with torch.no_grad():
        ref = model(x)
    out = torch.as_tensor(OnnxModule(path)(x))
    torch.testing.assert_close(out, ref, atol=2e-2 * float(ref.abs().max()), rtol=2e-2)


def test_static_chain_matches_onnx_runtime_to_float_rounding(tmp_path):
    # the layer keeps its bias on the int32 grid ONNX's QDQ bias uses: a bias rounded only in the export moved
    # outputs by up to half a step, enough to flip the next layer's input codes (0.66% max error here before)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1)).eval()
    x = torch.randn(4, 3, 16, 16)
    st.quantize(model, st.StaticQuant(), data=[torch.randn(4, 3, 16, 16) for _ in range(3)] + [x])
    step = model[2].input_scale * model[2].weight_scale
    assert torch.allclose(model[2].bias / step, torch.round(model[2].bias / step), atol=1e-3)
    path = st.export_onnx(model, x, tmp_path / "chain.onnx", check=False)
    with torch.no_grad():
        ref = model(x)
    out = torch.as_tensor(OnnxModule(path)(x))
    assert float((out - ref).abs().max() / ref.abs().max()) < 1e-4


def test_int8_file_holds_integer_weights(digits_mlp, tmp_path):
    model, data = digits_mlp
    fp32 = st.export_onnx(model, data.example_inputs(1), tmp_path / "f.onnx", check=False)
    q = copy.deepcopy(model)
    st.quantize(q, st.StaticQuant(calibration_batches=2), data=data.calibration)
    int8 = st.export_onnx(q, data.example_inputs(1), tmp_path / "q.onnx")
    assert {"QuantizeLinear", "DequantizeLinear"} <= _ops(int8, tmp_path)
    assert int8.stat().st_size < 0.3 * fp32.stat().st_size  # int8 weights: about a quarter of fp32


@pytest.mark.slow
def test_static_cnn_exports_and_agrees(digits_cnn, tmp_path):
    model, data = digits_cnn
    q = copy.deepcopy(model)
    st.quantize(q, st.StaticQuant(calibration_batches=2), data=data.calibration)
    path = st.export_onnx(q, data.example_inputs(1), tmp_path / "cnn.onnx", check_inputs=data)
    assert "Conv" in _ops(path, tmp_path) and "QuantizeLinear" in _ops(path, tmp_path)
    report = st.check_agreement(q, path, data)
    assert report.kind == "int8" and report.cosine > 0.99 and report.top1_agreement >= 0.99


def test_structured_pruned_cnn_exports(digits_cnn, tmp_path):
    model, data = digits_cnn
    m = copy.deepcopy(model)
    ex = data.example_inputs(2)
    st.prune(m, st.StructuredPruning(ratio=0.5), example_inputs=ex, data=data.calibration)
    path = st.export_onnx(m, ex, tmp_path / "pruned.onnx")
    assert st.check_agreement(m, path, data).kind == "float"


def test_keyword_inputs(tmp_path):
    class KW(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(8, 3)

        def forward(self, input_ids, mask):
            return self.fc(input_ids * mask)

    model = KW()
    inputs = {"input_ids": torch.randn(2, 8), "mask": torch.ones(2, 8)}
    path = st.export_onnx(model, inputs, tmp_path / "kw.onnx")
    assert st.check_agreement(model, path, inputs).max_abs_error < 1e-5


class DataDependent(nn.Module):
    def forward(self, x):
        return x * 2 if x.sum() > 0 else x - 1  # Python branch on a tensor value


@torch.library.custom_op("slimtorch_test::mystery", mutates_args=())
def mystery(x: torch.Tensor) -> torch.Tensor:
    return x.clone()


@mystery.register_fake
def _(x):
    return torch.empty_like(x)


class Mystery(nn.Module):
    def forward(self, x):
        return mystery(x)


def test_untraceable_layer_is_named(tmp_path):
    model = nn.Sequential(nn.Linear(4, 4), DataDependent())
    with pytest.raises(st.UnsupportedModelError, match=r"layer '1' \(DataDependent\)"):
        st.export_onnx(model, torch.randn(2, 4), tmp_path / "x.onnx")
    assert not (tmp_path / "x.onnx").exists()


def test_untranslatable_operator_is_named_with_its_layer(tmp_path):
    model = nn.Sequential(nn.Linear(4, 4), nn.Sequential(Mystery()))
    with pytest.raises(st.UnsupportedModelError, match=r"slimtorch_test::mystery.*layer '1.0' \(Mystery\)"):
        st.export_onnx(model, torch.randn(2, 4), tmp_path / "x.onnx")


def test_bad_arguments(tmp_path):
    with pytest.raises(st.ConfigError, match=r"\.onnx"):
        st.export_onnx(TwoLayer(), torch.randn(1, 64), tmp_path / "m.bin")
    with pytest.raises(st.DataError, match="failed on the example inputs"):
        st.export_onnx(TwoLayer(), torch.randn(1, 3), tmp_path / "m.onnx")


def test_int8_outputs_run_as_integer_convolutions(digits_cnn, tmp_path):
    model, data = digits_cnn
    q = copy.deepcopy(model)
    st.quantize(q, st.StaticQuant(calibration_batches=2), data=data.calibration)
    path = st.export_onnx(q, data.example_inputs(1), tmp_path / "cnn.onnx", check_inputs=data,
                          int8_outputs=data.calibration)
    fused = _ops(path, tmp_path, optimized=True)
    # 7-bit codes (CPUs without VNNI) put a Clip before each layer's QuantizeLinear: no QLinearAdd fusion there
    expected = {"QLinearConv"} if U8S8_SATURATES else {"QLinearConv", "QLinearAdd"}
    assert expected <= fused and "Conv" not in fused and "FusedConv" not in fused
    report = st.check_agreement(q, path, data)
    assert report.kind == "int8" and report.cosine > 0.99 and report.top1_agreement >= 0.99
    assert data.evaluate(OnnxModule(path)) >= data.evaluate(q) - 2 / 359


class ExportsDifferently(nn.Module):
    """Computes something else while being exported, so the file disagrees with the eager model."""

    def forward(self, x):
        return x + 1.0 if torch.compiler.is_exporting() else x


def test_failed_check_writes_nothing(tmp_path):
    with pytest.raises(st.UnsupportedModelError, match="DISAGREE"):
        st.export_onnx(ExportsDifferently(), torch.randn(2, 3), tmp_path / "c.onnx")
    assert list(tmp_path.iterdir()) == []


def test_transformer_encoder_float_and_head_pruned(tmp_path):
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(32, 4, 64, batch_first=True, dropout=0.0)
    model = nn.Sequential(nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)).eval()
    x = torch.randn(2, 6, 32)
    pruned = copy.deepcopy(model)
    st.prune(pruned, st.StructuredPruning(ratio=0.5), example_inputs=x)
    for name, m in (("float", model), ("pruned", pruned)):
        path = st.export_onnx(m, x, tmp_path / f"{name}.onnx", check_inputs=torch.randn(5, 6, 32))
        assert st.check_agreement(m, path, torch.randn(3, 6, 32)).max_rel_error < 1e-5
    assert (tmp_path / "pruned.onnx").stat().st_size < (tmp_path / "float.onnx").stat().st_size


@pytest.mark.slow
def test_tucker_cnn_exports(digits_cnn, tmp_path):
    model, data = digits_cnn
    m = copy.deepcopy(model)
    st.decompose(m, st.LowRank(rank_ratio=0.5), example_inputs=data.example_inputs(2))
    assert any(isinstance(x, Tucker2Conv2d) for x in m.modules())
    path = st.export_onnx(m, data.example_inputs(1), tmp_path / "tucker.onnx", check_inputs=data)
    assert st.check_agreement(m, path, data).passed
