"""Measuring an exported ``.onnx`` file in ONNX Runtime, with the same ``Metrics`` as PyTorch:
``st.measure(path, x, runtime="onnxruntime")`` (this module registers the runtime with ``slimtorch.measure``)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from slimtorch.data import batch_size
from slimtorch.measure.latency import time_fn
from slimtorch.measure.metrics import RUNTIMES, Metrics
from slimtorch.onnx.export import export_onnx
from slimtorch.onnx.runtime import OnnxModule, session_feed


def _concrete_shapes(model: Any, feed: dict[str, np.ndarray]) -> dict[str, list[int]]:
    """Every value's shape for these inputs (ONNX shape inference on a copy with the input dims fixed)."""
    import onnx

    m = onnx.ModelProto()
    m.CopyFrom(model)
    for inp in m.graph.input:
        if inp.name in feed:
            dims = inp.type.tensor_type.shape.dim
            for d, size in zip(dims, feed[inp.name].shape, strict=False):
                d.Clear()
                d.dim_value = int(size)
    while True:  # ONNX does not know contrib ops' output shapes: give those of MatMulNBits and infer again
        m = onnx.shape_inference.infer_shapes(m, strict_mode=False)
        shapes: dict[str, list[int]] = {}
        for v in list(m.graph.value_info) + list(m.graph.input) + list(m.graph.output):
            dims = v.type.tensor_type.shape.dim
            if dims and all(d.HasField("dim_value") for d in dims):
                shapes[v.name] = [d.dim_value for d in dims]
        for init in m.graph.initializer:
            shapes[init.name] = list(init.dims)
        added = False
        for node in m.graph.node:
            if node.op_type == "MatMulNBits" and node.input[0] in shapes and node.output[0] not in shapes:
                n = next(a.i for a in node.attribute if a.name == "N")
                m.graph.value_info.append(onnx.helper.make_tensor_value_info(
                    node.output[0], onnx.TensorProto.FLOAT, shapes[node.input[0]][:-1] + [n]))
                added = True
        if not added:
            return shapes


def onnx_macs(model: Any, feed: dict[str, np.ndarray]) -> int:
    """Multiply-accumulates of the matrix products and convolutions of one run on ``feed`` (the ops
    ``torch.utils.flop_counter`` counts too), from the graph's shapes; ops of unknown shape count 0."""
    shapes = _concrete_shapes(model, feed)
    macs = 0
    for node in model.graph.node:
        a = shapes.get(node.input[0]) if node.input else None
        if node.op_type == "MatMulNBits" and a:
            attrs = {x.name: x.i for x in node.attribute}
            macs += int(np.prod(a[:-1])) * attrs["K"] * attrs["N"]
            continue
        out = shapes.get(node.output[0]) if node.output else None
        if not a or not out:
            continue
        if node.op_type in ("MatMul", "MatMulInteger"):
            macs += int(np.prod(out)) * a[-1]
        elif node.op_type == "Gemm":
            trans_a = any(x.name == "transA" and x.i for x in node.attribute)
            macs += int(np.prod(out)) * a[0 if trans_a else 1]
        elif node.op_type == "Conv" and (w := shapes.get(node.input[1])):
            macs += int(np.prod(out)) * int(np.prod(w[1:]))
    return macs


#: inputs that hold quantization parameters, not weights: op type -> input positions
_QPARAM_INPUTS = {"QuantizeLinear": (1, 2), "DequantizeLinear": (1, 2), "MatMulNBits": (2, 3),
                  "MatMulInteger": (2, 3), "DynamicQuantizeLinear": ()}


def onnx_param_counts(model: Any) -> tuple[int, int]:
    """(weights, non-zero weights) stored in the file's initializers, quantization parameters left out and
    4-bit packed bytes counted as two weights each."""
    from onnx import numpy_helper

    role: dict[str, str] = {}
    for node in model.graph.node:
        for pos, name in enumerate(node.input):
            if pos in _QPARAM_INPUTS.get(node.op_type, ()):
                role.setdefault(name, "qparam")
            elif node.op_type == "MatMulNBits" and pos == 1:
                role[name] = "nibbles"
    params = nonzero = 0
    for init in model.graph.initializer:
        kind = role.get(init.name)
        if kind == "qparam" or len(init.dims) == 0:
            continue
        values = numpy_helper.to_array(init)
        if kind == "nibbles":
            params += 2 * values.size
            nonzero += int(np.count_nonzero(values & 0x0F != 8) + np.count_nonzero(values >> 4 != 8))
        else:
            params += values.size
            nonzero += int(np.count_nonzero(values))
    return params, nonzero


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return 0


def measure_onnx(
    path: str | os.PathLike | nn.Module,
    example_inputs: Any,
    *,
    eval_fn: Callable[[nn.Module], float] | None = None,
    warmup: int = 3,
    repeats: int = 30,
    max_seconds: float = 10.0,
    label: str = "",
) -> Any:
    """Measure an ``.onnx`` file in ONNX Runtime: the same :class:`~slimtorch.measure.Metrics` as PyTorch gives.

    ``size_bytes`` is the file's size (plus any external-data files next to it); latency is timed on
    ``example_inputs`` after ``warmup`` runs, with ``torch.get_num_threads()`` intra-op threads; FLOPs are the
    matrix products and convolutions of the graph (2 per multiply-accumulate); ``peak_memory_bytes`` is the
    growth of the process's resident memory from before the session is created to after the first run
    (weights, arena and activations); accuracy is ``eval_fn`` applied to an :class:`OnnxModule`.

    Args:
        path: the ``.onnx`` file, or an ``nn.Module``, which is exported to a temporary file first.
        example_inputs: a tensor, a tuple of positional inputs or a dict of keyword inputs.
        eval_fn: called as ``eval_fn(onnx_module)``; its return value is recorded as ``accuracy``.
        warmup: untimed runs before timing.
        repeats: timed runs (fewer if ``max_seconds`` runs out, never fewer than 5).
        max_seconds: time budget for the timed runs (s).
        label: a name for the record in tables.

    Returns:
        A ``Metrics`` record with ``runtime="onnxruntime"``.

    Raises:
        ArtifactError: the file is missing or cannot be loaded.
        DataError: the inputs do not match the file's inputs.
    """
    import onnx

    if isinstance(path, nn.Module):
        with tempfile.TemporaryDirectory() as tmp:
            onnx_path = export_onnx(path, example_inputs, Path(tmp) / "model.onnx", check=False)
            return measure_onnx(onnx_path, example_inputs, eval_fn=eval_fn, warmup=warmup, repeats=repeats,
                                max_seconds=max_seconds, label=label)
    path = Path(path)
    rss_before = _rss_bytes()
    module = OnnxModule(path)
    feed = session_feed(module.session, example_inputs)
    module.session.run(None, feed)
    peak = max(_rss_bytes() - rss_before, 0)
    timing = time_fn(lambda: module.session.run(None, feed), warmup=warmup, repeats=repeats, max_seconds=max_seconds)
    graph = onnx.load(str(path))
    params, nonzero = onnx_param_counts(graph)
    macs = onnx_macs(graph, feed)
    size = path.stat().st_size + sum(p.stat().st_size for p in path.parent.glob(path.name + ".data"))
    accuracy = float(eval_fn(module)) if eval_fn is not None else None
    return Metrics(params=params, nonzero_params=nonzero, size_bytes=size, flops=2 * macs, macs=macs,
                   latency_ms=timing.median_ms, latency_p90_ms=timing.p90_ms, peak_memory_bytes=peak,
                   accuracy=accuracy, batch_size=batch_size(example_inputs),
                   threads=module.session.get_session_options().intra_op_num_threads, runtime="onnxruntime",
                   label=label)


RUNTIMES["onnxruntime"] = measure_onnx
