"""One rounding instead of two between int8 layers of an exported graph.

With ``int8_outputs``, a static layer's output is quantized (``Q_a -> DQ_a``) and the next static layer
quantizes it again on its own input grid (``Q_b -> DQ_b``). The second rounding only loses precision and costs
two element-wise passes, so :func:`share_grids` makes the consumer read the producer's grid: ``Q_b`` and
``DQ_b`` are dropped, the consumer reads ``DQ_a`` (which may feed other nodes too, e.g. a residual add), and its
int32 bias is re-expressed on the new ``x_scale * w_scale``. Initializers left unused are removed.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def share_grids(model: Any) -> int:
    """Rewrite ``model`` (an ``onnx.ModelProto``) in place as described above; returns the pairs removed."""
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    consumers: dict[str, list] = {}
    for n in graph.node:
        for name in n.input:
            consumers.setdefault(name, []).append(n)
    outputs = {o.name for o in graph.output}
    dropped = []
    for q_b in [n for n in graph.node if n.op_type == "QuantizeLinear"]:
        dq_a = producer.get(q_b.input[0])
        q_a = producer.get(dq_a.input[0]) if dq_a is not None and dq_a.op_type == "DequantizeLinear" else None
        users = consumers.get(q_b.output[0], [])
        if q_a is None or q_a.op_type != "QuantizeLinear" or len(q_a.input) < 3 or len(users) != 1:
            continue
        dq_b = users[0]
        layers = consumers.get(dq_b.output[0], [])
        if (dq_b.op_type != "DequantizeLinear" or dq_b.output[0] in outputs or not layers
                or any(c.op_type not in ("Conv", "Gemm") or list(c.input).index(dq_b.output[0]) != 0 for c in layers)
                or not all(_bias_on(graph, layer, q_a.input[1], producer, inits) for layer in layers)):
            continue
        for layer in layers:
            layer.input[0] = dq_a.output[0]
        dropped += [q_b, dq_b]
    for node in dropped:
        graph.node.remove(node)
    used = {name for n in graph.node for name in n.input}
    for init in [i for i in graph.initializer if i.name not in used]:
        graph.initializer.remove(init)
    return len(dropped) // 2


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
