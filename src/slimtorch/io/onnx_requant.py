"""One rounding instead of two between int8 layers of an exported graph.

With ``int8_outputs``, a static layer's output is quantized (``Q_a -> DQ_a``) and the next static layer
quantizes it again on its own input grid (``Q_b -> DQ_b``). Where ``DQ_a`` feeds only ``Q_b``, the second
rounding only loses precision and stops ONNX Runtime from fusing the pair away, so :func:`share_grids` makes the
consumer read the producer's grid: ``Q_b``/``DQ_b`` take ``Q_a``'s scale and zero point (ONNX Runtime then drops
the now redundant pair), and the consumer's int32 bias is re-expressed on the new ``x_scale * w_scale``.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def share_grids(model: Any) -> int:
    """Rewrite ``model`` (an ``onnx.ModelProto``) in place as described above; returns the pairs rewritten."""

    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    consumers: dict[str, list] = {}
    for n in graph.node:
        for name in n.input:
            consumers.setdefault(name, []).append(n)

    def only(name: str, op_type: str):
        users = consumers.get(name, [])
        return users[0] if len(users) == 1 and users[0].op_type == op_type else None

    rewritten = 0
    for q_b in [n for n in graph.node if n.op_type == "QuantizeLinear"]:
        dq_a = producer.get(q_b.input[0])
        if dq_a is None or dq_a.op_type != "DequantizeLinear" or only(dq_a.output[0], "QuantizeLinear") is None:
            continue
        q_a = producer.get(dq_a.input[0])
        dq_b = only(q_b.output[0], "DequantizeLinear")
        if q_a is None or q_a.op_type != "QuantizeLinear" or dq_b is None or len(q_a.input) < 3:
            continue
        layers = [c for c in consumers.get(dq_b.output[0], []) if c.op_type in ("Conv", "Gemm")]
        if len(layers) != len(consumers.get(dq_b.output[0], [])) or not all(
                _bias_on(graph, layer, q_a.input[1], producer, inits) for layer in layers):
            continue
        for node in (q_b, dq_b):
            node.input[1], node.input[2] = q_a.input[1], q_a.input[2]
        rewritten += 1
    return rewritten


def _bias_on(graph: Any, layer: Any, x_scale_name: str, producer: dict, inits: dict) -> bool:
    """Re-express ``layer``'s int32 bias on ``x_scale * w_scale``; False (nothing changed) if its pattern differs."""
    from onnx import numpy_helper

    if len(layer.input) < 3:
        return True
    dq_bias, dq_w = producer.get(layer.input[2]), producer.get(layer.input[1])
    if dq_bias is None or dq_w is None or dq_bias.op_type != "DequantizeLinear" or dq_w.op_type != "DequantizeLinear":
        return False
    names = (dq_bias.input[0], dq_bias.input[1], dq_w.input[1], x_scale_name)
    if not all(n in inits for n in names):
        return False
    bias_q, bias_scale, w_scale, x_scale = (numpy_helper.to_array(inits[n]) for n in names)
    bias = bias_q.astype(np.float64) * bias_scale
    new_scale = (x_scale * w_scale).astype(np.float32)
    limit = 2**31 - 1
    new_q = np.clip(np.round(bias / new_scale), -limit, limit).astype(np.int32)
    new_names = [f"{layer.name}_bias_q_shared_grid", f"{layer.name}_bias_scale_shared_grid"]
    for name, value in zip(new_names, (new_q, new_scale), strict=True):
        inits[name] = numpy_helper.from_array(value, name)
        graph.initializer.append(inits[name])
    dq_bias.input[0], dq_bias.input[1] = new_names
    return True
