"""Do PyTorch and ONNX Runtime compute the same thing? Both runtimes on the same inputs, compared.

The tolerance depends on the compression: float layers must agree to float rounding; int8 layers round their
activations to integers, and a value that lands within float rounding of a rounding boundary goes one integer
step either way in the two runtimes, so they agree less tightly (but still closely).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Literal

import numpy as np
import torch
from torch import nn
from torch.utils import _pytree as pytree

from slimtorch.data import call, iter_inputs
from slimtorch.errors import DataError, UnsupportedModelError
from slimtorch.io.onnx_runtime import open_session, session_feed

Kind = Literal["float", "weight_only", "int8"]


@dataclasses.dataclass(frozen=True)
class Tolerance:
    """Bounds an agreement must meet.

    Attributes:
        max_rel_error: largest ``max |torch - onnx| / max |torch|`` over each output (fraction).
        min_cosine: smallest cosine similarity between the two runtimes' outputs of one sample.
        min_top1: smallest fraction of samples whose arg-max class agrees (classification outputs only).
    """

    max_rel_error: float
    min_cosine: float
    min_top1: float


#: tolerance per kind of compression; a model is held to the loosest kind it contains
TOLERANCES: dict[str, Tolerance] = {
    "float": Tolerance(max_rel_error=1e-4, min_cosine=0.99999, min_top1=0.99),
    "weight_only": Tolerance(max_rel_error=2e-2, min_cosine=0.9999, min_top1=0.98),
    "int8": Tolerance(max_rel_error=0.1, min_cosine=0.99, min_top1=0.9),
}


@dataclasses.dataclass(frozen=True)
class AgreementReport:
    """How closely ONNX Runtime reproduces the PyTorch model.

    Attributes:
        kind: the compression the tolerance was chosen for ("float", "weight_only" or "int8").
        max_abs_error: largest absolute difference over every output element.
        max_rel_error: largest ``max |torch - onnx| / max |torch|`` over the outputs (fraction).
        cosine: smallest per-sample cosine similarity of the main output (1 = same direction).
        mean_cosine: mean per-sample cosine similarity of the main output.
        top1_agreement: fraction of samples with the same arg-max over the last dimension of the main output,
            a near tie counting as agreeing (torch's scores for the two classes within ``max_rel_error`` times
            its largest score of each other); None when that output is not a class score vector.
        samples: rows (samples) compared.
        tolerance: the bounds applied.
        passed: whether every bound was met.
    """

    kind: str
    max_abs_error: float
    max_rel_error: float
    cosine: float
    mean_cosine: float
    top1_agreement: float | None
    samples: int
    tolerance: Tolerance
    passed: bool

    def summary(self) -> str:
        """One line for logs and error messages."""
        top1 = "n/a" if self.top1_agreement is None else f"{self.top1_agreement:.4f}"
        verdict = "agree" if self.passed else "DISAGREE"
        return (f"torch and onnxruntime {verdict} ({self.kind} tolerance) on {self.samples} samples: max abs "
                f"error {self.max_abs_error:.3g}, max rel error {self.max_rel_error:.3g} "
                f"(<= {self.tolerance.max_rel_error:g}), cosine {self.cosine:.6f} (>= {self.tolerance.min_cosine:g}),"
                f" top-1 agreement {top1} (>= {self.tolerance.min_top1:g})")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict."""
        return dataclasses.asdict(self)


def compression_kind(model: nn.Module) -> Kind:
    """The loosest kind of compression in ``model``: "int8" if any layer quantizes activations, else
    "weight_only" if any layer has integer weights, else "float"."""
    from slimtorch.quant.modules import QuantConv2d, QuantLinear

    kinds = {"float"}
    for m in model.modules():
        if isinstance(m, QuantConv2d | QuantLinear):
            kinds.add("weight_only" if m.mode == "weight_only" else "int8")
    return "int8" if "int8" in kinds else "weight_only" if "weight_only" in kinds else "float"


def _batches(inputs: Any, num_batches: int) -> list[Any]:
    """One batch for a tensor, tuple or dict of inputs; up to ``num_batches`` from data (a loader, a list of
    batches, a zoo data object -- its test split)."""
    if isinstance(inputs, torch.Tensor | tuple | dict):
        return [inputs]
    return list(iter_inputs(inputs, num_batches, split="test"))


def _top1_agreeing(ref: np.ndarray, got: np.ndarray, max_rel_error: float) -> int:
    """Rows whose arg-max class agrees in both runtimes. A row whose classes differ still agrees when torch's
    own scores for the two classes are within the tolerated error (``max_rel_error * max |ref|``) of each other:
    such a near tie flips on any rounding, and the error bound already covers it."""
    r, g = ref.reshape(-1, ref.shape[-1]), got.reshape(-1, got.shape[-1])
    mine, theirs = r.argmax(-1), g.argmax(-1)
    rows = np.arange(len(r))
    margin = r[rows, mine] - r[rows, theirs]
    return int(((mine == theirs) | (margin <= max_rel_error * float(np.abs(r).max()))).sum())


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a2, b2 = a.reshape(len(a), -1).astype(np.float64), b.reshape(len(b), -1).astype(np.float64)
    dot = (a2 * b2).sum(1)
    norms = np.linalg.norm(a2, axis=1) * np.linalg.norm(b2, axis=1)
    # two all-zero rows agree perfectly
    return np.where(norms > 0, dot / np.maximum(norms, 1e-30), np.where(np.abs(a2 - b2).max(1) == 0, 1.0, 0.0))


def check_agreement(
    model: nn.Module,
    onnx_path: str | os.PathLike,
    inputs: Any,
    *,
    tolerance: Tolerance | None = None,
    num_batches: int = 8,
    raise_on_failure: bool = True,
) -> AgreementReport:
    """Run ``model`` in PyTorch and ``onnx_path`` in ONNX Runtime on the same inputs and compare the outputs.

    Args:
        model: the PyTorch model the file was exported from (run in eval mode; its mode is restored).
        onnx_path: the ``.onnx`` file.
        inputs: one batch (a tensor, a tuple of positional inputs, a dict of keyword inputs) or data (a loader,
            a list of batches, a zoo data object, whose test split is used).
        tolerance: the bounds to apply; None: ``TOLERANCES[compression_kind(model)]``.
        num_batches: batches of data to compare at most.
        raise_on_failure: raise when a bound is not met (otherwise only ``passed`` is False).

    Returns:
        An :class:`AgreementReport`.

    Raises:
        UnsupportedModelError: the runtimes disagree beyond the tolerance (with ``raise_on_failure``).
        ArtifactError: the file is missing or cannot be loaded.
        DataError: the inputs do not match the file's inputs, or the model fails on them.

    Example:
        >>> import slimtorch as st, torch
        >>> model = torch.nn.Linear(8, 4)
        >>> path = st.export_onnx(model, torch.randn(2, 8), "/tmp/lin.onnx", check=False)
        >>> st.check_agreement(model, path, torch.randn(16, 8)).passed
        True
    """
    kind = compression_kind(model)
    tol = tolerance or TOLERANCES[kind]
    session = open_session(onnx_path)
    was_training = model.training
    model.eval()
    max_abs = max_rel = 0.0
    cosines: list[np.ndarray] = []
    agree = rows = 0
    classify = True
    try:
        for batch in _batches(inputs, num_batches):
            feed = session_feed(session, batch)
            try:
                with torch.no_grad():
                    out = call(model, batch)
            except Exception as err:
                raise DataError(f"the model failed on the inputs given to check_agreement ({type(err).__name__}: "
                                f"{err}); pass inputs of the shape the model expects") from err
            ref = [t.detach().float().cpu().numpy() for t in pytree.tree_leaves(out) if isinstance(t, torch.Tensor)]
            try:
                got = session.run(None, feed)
            except Exception as err:  # ONNX Runtime's own exception types: wrong shapes or dtypes
                raise DataError(f"ONNX Runtime rejected the inputs ({str(err).splitlines()[0]}); a file exported "
                                "with dynamic_batch=False only takes its export batch size") from None
            for r, g in zip(ref, got, strict=False):
                if r.shape != g.shape:
                    raise UnsupportedModelError(f"ONNX output shape {g.shape} differs from the model's {r.shape}; "
                                                "re-export with the inputs you run")
                err = float(np.abs(r - g).max()) if r.size else 0.0
                max_abs = max(max_abs, err)
                max_rel = max(max_rel, err / max(float(np.abs(r).max()) if r.size else 0.0, 1e-12))
            main_ref, main_got = ref[0], got[0]
            cosines.append(_cosines(main_ref, main_got))
            classify = classify and main_ref.ndim >= 2 and main_ref.shape[-1] > 1
            if classify:
                agree += _top1_agreeing(main_ref, main_got, tol.max_rel_error)
                rows += int(np.prod(main_ref.shape[:-1]))
    finally:
        model.train(was_training)
    cos = np.concatenate(cosines) if cosines else np.ones(1)
    top1 = agree / rows if classify and rows else None
    passed = max_rel <= tol.max_rel_error and float(cos.min()) >= tol.min_cosine and (
        top1 is None or top1 >= tol.min_top1)
    report = AgreementReport(kind=kind, max_abs_error=max_abs, max_rel_error=max_rel, cosine=float(cos.min()),
                             mean_cosine=float(cos.mean()), top1_agreement=top1, samples=int(cos.size),
                             tolerance=tol, passed=passed)
    if raise_on_failure and not passed:
        raise UnsupportedModelError(
            f"{onnx_path}: {report.summary()}. Check the layers that were swapped for export (see the log), "
            "compare on more representative inputs, or pass a looser st.io.onnx_check.Tolerance")
    return report
