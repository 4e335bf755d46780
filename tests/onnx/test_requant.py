"""share_grids: a consumer int8 layer reads its producer's grid, with its int32 bias moved onto the new scale."""

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from slimtorch.onnx.requant import share_grids


def _chain() -> onnx.ModelProto:
    """x -> Q_a/DQ_a (scale 0.05) -> Q_b/DQ_b (scale 0.03) -> Gemm(DQ w, DQ int32 bias)."""
    rng = np.random.default_rng(0)
    w = rng.integers(-127, 128, size=(3, 4)).astype(np.int8)
    w_scale = np.full(3, 0.01, np.float32)
    bias = np.array([0.5, -0.25, 0.125])
    inits = [numpy_helper.from_array(np.array(0.05, np.float32), "sa"),
             numpy_helper.from_array(np.array(0, np.uint8), "za"),
             numpy_helper.from_array(np.array(0.03, np.float32), "sb"),
             numpy_helper.from_array(np.array(0, np.uint8), "zb"),
             numpy_helper.from_array(w, "w"), numpy_helper.from_array(w_scale, "ws"),
             numpy_helper.from_array(np.zeros(3, np.int8), "wz"),
             numpy_helper.from_array(np.round(bias / (0.03 * w_scale)).astype(np.int32), "bq"),
             numpy_helper.from_array((0.03 * w_scale).astype(np.float32), "bs")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "sa", "za"], ["qa"]),
             helper.make_node("DequantizeLinear", ["qa", "sa", "za"], ["da"]),
             helper.make_node("QuantizeLinear", ["da", "sb", "zb"], ["qb"]),
             helper.make_node("DequantizeLinear", ["qb", "sb", "zb"], ["db"]),
             helper.make_node("DequantizeLinear", ["w", "ws", "wz"], ["wd"], axis=0),
             helper.make_node("DequantizeLinear", ["bq", "bs"], ["bd"], axis=0),
             helper.make_node("Gemm", ["db", "wd", "bd"], ["y"], transB=1, name="gemm")]
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def test_consumer_reads_the_producer_grid():
    model = _chain()
    assert share_grids(model) == 1
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("QuantizeLinear") == 1 and ops.count("DequantizeLinear") == 3  # Q_b, DQ_b gone
    gemm = next(n for n in model.graph.node if n.op_type == "Gemm")
    assert gemm.input[0] == "da"
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    assert {"sb", "zb", "bq", "bs"}.isdisjoint(inits)  # unused initializers removed
    bias_dq = next(n for n in model.graph.node if n.output[0] == "bd")
    np.testing.assert_allclose(inits[bias_dq.input[1]], 0.05 * np.full(3, 0.01), rtol=1e-6)
    # the bias is unchanged up to half a step of the new scale
    np.testing.assert_allclose(inits[bias_dq.input[0]] * inits[bias_dq.input[1]], [0.5, -0.25, 0.125], atol=2.5e-4)
    # the output is the product on the a-grid: x rounded once, to multiples of 0.05
    x = np.array([[0.12, 0.5, 0.0, 1.01], [0.3, 0.26, 0.07, 0.9]], np.float32)
    xa = np.clip(np.round(x / 0.05), 0, 255) * 0.05
    w = inits["w"] * 0.01
    np.testing.assert_allclose(_run(model, x), xa @ w.T + [0.5, -0.25, 0.125], atol=1e-3)


def test_shared_producer_is_still_read_once():
    model = _chain()
    model.graph.node.append(helper.make_node("Relu", ["da"], ["other"]))  # DQ_a also feeds a residual path
    model.graph.output.append(helper.make_tensor_value_info("other", TensorProto.FLOAT, [2, 4]))
    assert share_grids(model) == 1


def test_non_layer_consumer_is_left_alone():
    model = _chain()
    model.graph.node.append(helper.make_node("Relu", ["db"], ["other"]))  # DQ_b read by something else
    model.graph.output.append(helper.make_tensor_value_info("other", TensorProto.FLOAT, [2, 4]))
    assert share_grids(model) == 0
