"""Running an exported ``.onnx`` file in ONNX Runtime: sessions, their inputs, and the file as an ``nn.Module``.

Sessions use as many intra-op threads as ``torch.get_num_threads()`` and do not spin idle threads, so that
timings next to PyTorch compare like with like on a shared machine.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from slimtorch.errors import ArtifactError, DataError


def open_session(path: str | os.PathLike, threads: int | None = None, optimized_path: str | None = None) -> Any:
    """An ``onnxruntime.InferenceSession`` on the CPU with all graph optimizations (QDQ fusion included).

    Args:
        path: the ``.onnx`` file.
        threads: intra-op threads; None: ``torch.get_num_threads()``.
        optimized_path: also write the graph ONNX Runtime runs (after fusion) to this file, to inspect it.

    Raises:
        ArtifactError: the file is missing or ONNX Runtime cannot load it.
    """
    import onnxruntime as ort

    if not Path(path).is_file():
        raise ArtifactError(f"ONNX file {path} does not exist; write it with st.export_onnx(model, example, path)")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    if optimized_path:
        options.optimized_model_filepath = optimized_path
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as err:  # ORT raises its own exception types for a bad file
        raise ArtifactError(f"ONNX Runtime cannot load {path}: {str(err).splitlines()[0]}") from None


def session_feed(session: Any, inputs: Any) -> dict[str, np.ndarray]:
    """Map model inputs (a tensor, a tuple of positional inputs or a dict of keyword inputs) onto the session's
    input names; non-tensor values were constants at export time and are dropped.

    Raises:
        DataError: the number or names of the tensors do not match the file's inputs.
    """
    names = [i.name for i in session.get_inputs()]
    if isinstance(inputs, dict):
        tensors = {k: v for k, v in inputs.items() if isinstance(v, torch.Tensor)}
        missing = [n for n in names if n not in tensors]
        if missing:
            raise DataError(f"the ONNX file expects inputs {names}; missing {missing} in the given dict")
        return {n: tensors[n].detach().cpu().numpy() for n in names}
    values = [inputs] if isinstance(inputs, torch.Tensor) else [v for v in inputs if isinstance(v, torch.Tensor)]
    if len(values) != len(names):
        raise DataError(f"the ONNX file expects {len(names)} input tensor(s) {names}, got {len(values)}")
    return {n: v.detach().cpu().numpy() for n, v in zip(names, values, strict=True)}


class OnnxModule(nn.Module):
    """An ONNX Runtime session behind the ``nn.Module`` call interface, so ``eval_fn(model)`` works unchanged.

    Outputs come back as CPU tensors: one tensor, or a tuple when the file has several outputs.
    """

    def __init__(self, path: str | os.PathLike, threads: int | None = None) -> None:
        super().__init__()
        self.path = Path(path)
        self.session = open_session(path, threads)

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor | tuple[torch.Tensor, ...]:
        inputs = kwargs if kwargs else (args[0] if len(args) == 1 else args)
        outputs = [torch.from_numpy(o) for o in self.session.run(None, session_feed(self.session, inputs))]
        return outputs[0] if len(outputs) == 1 else tuple(outputs)
