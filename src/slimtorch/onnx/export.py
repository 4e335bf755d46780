"""ONNX export of any slimtorch model (float, pruned, low-rank, sparse, quantized), checked in ONNX Runtime.

The path is the one PyTorch recommends for this version: ``torch.export`` (non-strict) captures the graph,
then ``torch.onnx.export(..., dynamo=True)`` translates it with onnxscript's torchlib. Compressed layers are
swapped for export twins first (``onnx/twins.py``), so int8 layers leave as the QDQ pattern and int4
weight-only layers as ``com.microsoft.MatMulNBits`` (``onnx/ops.py``). The agreement check lives in
``onnx/check.py``, measuring in ONNX Runtime in ``onnx/runtime.py``.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from slimtorch._log import logger
from slimtorch.data import first_tensor
from slimtorch.errors import ConfigError, DataError, UnsupportedModelError
from slimtorch.io.atomic import publish, temporary_sibling, write_bytes
from slimtorch.quant.lower import per_layer


def require_onnx() -> None:
    """Raise ``ConfigError`` naming the install command unless onnx, onnxscript and onnxruntime all import."""
    import importlib

    missing = []
    for name in ("onnx", "onnxscript", "onnxruntime"):
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise ConfigError(f"ONNX export needs the packages {missing}, which are not installed: "
                          "pip install 'slimtorch[onnx]'")


def _as_args(example_inputs: Any) -> tuple[tuple, dict]:
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,), {}
    if isinstance(example_inputs, dict):
        return (), dict(example_inputs)
    if isinstance(example_inputs, tuple | list):
        return tuple(example_inputs), {}
    raise DataError(f"example_inputs must be a tensor, a tuple or a dict of tensors, got {type(example_inputs)}")


def _batched(args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """Inputs with batch 1 repeated to batch 2: torch.export specializes a size-1 dimension to a constant."""
    def grow(v: Any) -> Any:
        return v.repeat(2, *([1] * (v.dim() - 1))) if isinstance(v, torch.Tensor) and v.dim() and len(v) == 1 else v

    return tuple(grow(v) for v in args), {k: grow(v) for k, v in kwargs.items()}


def _batch_dims(args: tuple, kwargs: dict) -> tuple | dict:
    batch = torch.export.Dim("batch", max=2**20)

    def spec(v: Any) -> dict | None:
        return {0: batch} if isinstance(v, torch.Tensor) and v.dim() else None

    return {k: spec(v) for k, v in kwargs.items()} if kwargs else tuple(spec(v) for v in args)


@contextlib.contextmanager
def _module_stack(model: nn.Module):
    """Track which submodules are running (pre/post forward hooks), so a failure can name its layer."""
    names = {id(m): n for n, m in model.named_modules()}
    stack: list[str] = []

    def enter(module: nn.Module, _args: Any) -> None:
        stack.append(names.get(id(module), "?"))

    def leave(_module: nn.Module, _args: Any, _out: Any) -> None:
        if stack:
            stack.pop()

    hooks = []
    for m in model.modules():
        hooks += [m.register_forward_pre_hook(enter), m.register_forward_hook(leave)]
    try:
        yield stack
    finally:
        for h in hooks:
            h.remove()


def _capture(model: nn.Module, args: tuple, kwargs: dict, dynamic: bool) -> torch.export.ExportedProgram:
    """``torch.export`` the model; a failure names the innermost layer that was running."""
    dims = _batch_dims(args, kwargs) if dynamic else None
    with _module_stack(model) as stack:
        try:
            return torch.export.export(model, args, kwargs, dynamic_shapes=dims, strict=False)
        except Exception as err:
            where = stack[-1] if stack else ""
            culprit = f"layer {where!r} ({type(model.get_submodule(where)).__name__})" if where else "the model"
            first = next((ln for ln in str(err).splitlines() if ln.strip()), type(err).__name__)
            raise _CaptureError(culprit, f"{type(err).__name__}: {first}") from err


class _CaptureError(Exception):
    def __init__(self, culprit: str, reason: str) -> None:
        super().__init__(reason)
        self.culprit, self.reason = culprit, reason


def _module_of(node: torch.fx.Node) -> str:
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return "the model's top level"
    path, cls = list(stack.values())[-1]
    path = re.sub(r"^L\['self'\]\.?", "", str(path)) or "(top level)"
    name = cls.__name__ if isinstance(cls, type) else str(cls).rsplit(".", 1)[-1].rstrip("'>")
    return f"layer {path!r} ({name})"


def _untranslatable(program: torch.export.ExportedProgram) -> list[tuple[str, str]]:
    """``(operator, layer)`` for every operator in the graph that no ONNX translation covers."""
    from torch.onnx._internal.exporter._registration import ONNXRegistry

    from slimtorch.onnx.ops import TRANSLATIONS

    registry = ONNXRegistry.from_torchlib()
    found = []
    for node in program.run_decompositions().graph.nodes:
        target = node.target
        if node.op != "call_function" or not isinstance(target, torch._ops.OpOverload):
            continue
        if target in TRANSLATIONS or registry.is_registered(target):
            continue
        found.append((target.name(), _module_of(node)))
    return found


def _translate(program: torch.export.ExportedProgram) -> Any:
    from slimtorch.onnx.ops import TRANSLATIONS
    quiet = io.StringIO()
    # the exporter and its optimizer log every pass at INFO; keep the user's log to slimtorch's own lines
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "onnxscript", "onnx_ir")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(quiet):
            onnx_program = torch.onnx.export(program, dynamo=True, custom_translation_table=TRANSLATIONS,
                                             optimize=True, verbose=False)
    except Exception as err:
        missing = _untranslatable(program)
        if missing:
            listed = "; ".join(f"operator {op} in {layer}" for op, layer in missing[:5])
            raise UnsupportedModelError(
                f"cannot export to ONNX: no ONNX translation for {listed}. Replace that layer with standard "
                "ones, exclude it from compression, or register a translation for the operator") from err
        first = next((ln for ln in str(err).splitlines() if ln.strip()), type(err).__name__)
        raise UnsupportedModelError(f"cannot export to ONNX: the ONNX translation failed ({first})") from err
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)
    return onnx_program.model_proto


def export_onnx(
    model: nn.Module,
    example_inputs: Any,
    path: str | os.PathLike,
    *,
    dynamic_batch: bool = True,
    check: bool = True,
    check_inputs: Any = None,
    int8_outputs: Any = None,
) -> Path:
    """Export ``model`` to an ONNX file that ONNX Runtime (and TensorRT, OpenVINO, ...) can run.

    Float, structurally pruned, low-rank and unstructured-sparse models export as plain layers; static int8
    layers as the QDQ pattern (QuantizeLinear/DequantizeLinear around int8 weights and int32 biases, which
    ONNX Runtime fuses into integer kernels); dynamic int8 layers as an in-graph activation quantization and
    ``MatMulInteger``; int4 weight-only layers whose group size is a power of two of at least 16 as ONNX
    Runtime's ``com.microsoft.MatMulNBits``; other integer weights dequantized in the graph; binary/ternary
    layers as float weights (ONNX has no 1- or 2-bit type). The model is not changed (compressed layers are
    swapped for export twins and put back). The file is written atomically.

    Args:
        model: the model to export (its train/eval mode is restored afterwards).
        example_inputs: a tensor, a tuple of positional inputs or a dict of keyword inputs.
        path: where to write the ``.onnx`` file (folders are created).
        dynamic_batch: make the first dimension of every input a free ``batch`` dimension. Where the model
            fixes its batch size, the export falls back to the example's batch with a warning.
        check: after writing, run :func:`slimtorch.check_agreement` on ``check_inputs`` (default: the example
            inputs) and raise if PyTorch and ONNX Runtime disagree beyond the tolerance for this compression.
        check_inputs: inputs or data (a loader, a list of batches, a zoo data object) for the check.
        int8_outputs: calibration data (as for ``StaticQuant``). With it, the output of every static int8 layer
            is quantized to uint8 too, at the range seen on this data: ONNX Runtime then runs whole
            QLinearConv / QGemm integer chains instead of a float Conv on dequantized values (much faster
            for convolutions), at the price of one more rounding per layer, which the int8 tolerance of
            the agreement check covers. PyTorch's own int8 layers keep float outputs.

    Returns:
        The path of the written file.

    Raises:
        UnsupportedModelError: a layer or operator cannot be exported (the message names both), or the
            exported file disagrees with the model (then nothing is written).
        DataError: ``example_inputs`` are not tensors the model accepts.

    Example:
        >>> import slimtorch as st, torch
        >>> model = torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.ReLU())
        >>> path = st.export_onnx(model, torch.randn(2, 8), "/tmp/tiny.onnx")
        >>> path.name
        'tiny.onnx'
    """
    if not isinstance(model, nn.Module):
        raise ConfigError(f"export_onnx needs an nn.Module, got {type(model).__name__}")
    path = Path(path)
    if path.suffix != ".onnx":
        raise ConfigError(f"export path {str(path)!r} must end in .onnx")
    from slimtorch.onnx.twins import export_twins  # onnxscript is imported on first export only

    args, kwargs = _as_args(example_inputs)
    qparams = None
    if int8_outputs is not None:
        from slimtorch.onnx.twins import calibrate_outputs

        qparams = calibrate_outputs(model, int8_outputs)
    # a lowered int8 graph (quant.lower) is exported in its per-layer form: the same layers, float between them,
    # which ONNX Runtime's QDQ fusion chains again
    with per_layer(model), export_twins(model, qparams) as (target, swapped), torch.no_grad(), \
            warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # deprecation notes inside torch.export, not the user's
        if swapped:
            logger.info("export_onnx: %d compressed layers exported through their ONNX forms: %s", len(swapped),
                        ", ".join(sorted(set(swapped.values()))))
        try:
            first_tensor(target(*args, **kwargs))
        except Exception as err:
            raise DataError(f"the model failed on the example inputs ({type(err).__name__}: {err}); pass "
                            "inputs of the shape the model expects, and check that the model runs in PyTorch "
                            "on them") from err
        try:
            program = _capture(target, *_batched(args, kwargs), dynamic=True) if dynamic_batch else None
        except _CaptureError as err:
            logger.warning("export_onnx: the batch dimension cannot be left free (%s in %s); exporting with "
                           "the example's batch size", err.reason, err.culprit)
            program = None
        if program is None:
            try:
                program = _capture(target, args, kwargs, dynamic=False)
            except _CaptureError as err:
                raise UnsupportedModelError(
                    f"cannot export to ONNX: torch.export failed in {err.culprit}: {err.reason}. Make that "
                    "layer traceable (no data-dependent Python control flow, no non-tensor outputs) or replace "
                    "it") from None
        proto = _translate(program)
    if qparams:
        from slimtorch.onnx.requant import share_grids

        logger.info("export_onnx: %d int8 layer pairs share one activation grid", share_grids(proto))
    data = proto.SerializeToString()
    if not check:
        write_bytes(path, data)
    else:  # checked before it takes the final name: a file that disagrees never lands at ``path``
        from slimtorch.onnx.check import check_agreement

        tmp = temporary_sibling(path)
        try:
            tmp.write_bytes(data)
            report = check_agreement(model, tmp, check_inputs if check_inputs is not None else example_inputs)
            publish(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        logger.info("export_onnx: %s", report.summary())
    logger.info("export_onnx: wrote %s (%.1f kB)", path, len(data) / 1e3)
    return path
