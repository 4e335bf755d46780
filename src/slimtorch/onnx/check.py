"""Do PyTorch and ONNX Runtime compute the same thing? Both runtimes on the same inputs, compared.

The tolerance depends on the compression: float layers must agree to float rounding; int8 layers round their
activations to integers, and a value that lands within float rounding of a rounding boundary goes one integer
step either way in the two runtimes, so they agree less tightly (but still closely).

Some models amplify rounding so much that no fixed bound holds between two correct runtimes (deep networks with
untrained weights, int8 ones above all: one activation code flipped in an early layer moves the output by
percent). Where a bound is missed, the check measures the model's own noise floor -- how far PyTorch's output
moves when the input of every layer is nudged by a few units of float rounding -- and accepts a disagreement no
larger than that floor: the export is then as faithful as the model's arithmetic allows, and the report says so.
A wrong export (a weight off, a layer dropped) still stands far above the floor of a model that is not chaos.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Iterator
from typing import Any, Literal

import numpy as np
import torch
from torch import nn
from torch.utils import _pytree as pytree

from slimtorch._log import logger
from slimtorch.data import call, iter_inputs
from slimtorch.errors import DataError, UnsupportedModelError
from slimtorch.onnx.runtime import open_session, session_feed

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
class NoiseFloor:
    """How far a model's output moves against itself under float-rounding-sized noise at every layer's input.

    Attributes:
        max_rel_error: largest ``max |nudged - torch| / max |torch|`` over the outputs (fraction).
        cosine: smallest per-sample cosine similarity of the main output, nudged vs not.
        top1_agreement: fraction of samples whose arg-max class survives the nudge (None: not class scores).
    """

    max_rel_error: float
    cosine: float
    top1_agreement: float | None


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
        passed: whether every bound was met, by the tolerance or within the noise floor.
        noise_floor: how far PyTorch's output moves against itself when every layer's input is nudged by
            ``NUDGE_ULPS`` units of float rounding (the worst of ``NUDGE_DRAWS`` draws), measured only when a
            bound of ``tolerance`` was missed; None otherwise.
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
    noise_floor: NoiseFloor | None = None

    def summary(self) -> str:
        """One line for logs and error messages."""
        top1 = "n/a" if self.top1_agreement is None else f"{self.top1_agreement:.4f}"
        verdict = "agree" if self.passed else "DISAGREE"
        line = (f"torch and onnxruntime {verdict} ({self.kind} tolerance) on {self.samples} samples: max abs "
                f"error {self.max_abs_error:.3g}, max rel error {self.max_rel_error:.3g} "
                f"(<= {self.tolerance.max_rel_error:g}), cosine {self.cosine:.6f} (>= {self.tolerance.min_cosine:g}),"
                f" top-1 agreement {top1} (>= {self.tolerance.min_top1:g})")
        if self.noise_floor is not None:
            f = self.noise_floor
            line += (f"; the model's own noise floor (every layer input nudged by {NUDGE_ULPS} units of float "
                     f"rounding, worst of {NUDGE_DRAWS} draws; {FLOOR_SLACK:g}x its deviation is accepted): "
                     f"max rel error {f.max_rel_error:.3g}, cosine {f.cosine:.6f}" + (
                         "" if f.top1_agreement is None else f", top-1 {f.top1_agreement:.4f}") + (
                         ": the runtimes agree within it" if self.passed else ""))
        return line

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict."""
        return dataclasses.asdict(self)


def compression_kind(model: nn.Module) -> Kind:
    """The loosest kind of compression in ``model``: "int8" if any layer quantizes activations, else
    "weight_only" if any layer has integer weights, else "float"."""
    from slimtorch.quant.formats import QuantConv2d
    from slimtorch.quant.modules import QuantLinear

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
    refs, gots, batches = [], [], _batches(inputs, num_batches)
    try:
        for batch in batches:
            feed = session_feed(session, batch)
            refs.append(_run(model, batch))
            try:
                got = session.run(None, feed)
            except Exception as err:  # ONNX Runtime's own exception types: wrong shapes or dtypes
                raise DataError(f"ONNX Runtime rejected the inputs ({str(err).splitlines()[0]}); a file exported "
                                "with dynamic_batch=False only takes its export batch size") from None
            for r, g in zip(refs[-1], got, strict=False):
                if r.shape != g.shape:
                    raise UnsupportedModelError(f"ONNX output shape {g.shape} differs from the model's {r.shape}; "
                                                "re-export with the inputs you run")
            gots.append(got)
        diff = _Difference.of(refs, gots, tol.max_rel_error)
        floor = None
        if not diff.within(tol):
            draws = []
            for seed in range(NUDGE_DRAWS):
                with _nudged(model, seed):
                    draws.append(_Difference.of(refs, [_run(model, b) for b in batches], tol.max_rel_error))
            floor = _Difference.worst(draws)
    finally:
        model.train(was_training)
    passed = diff.within(tol) or (floor is not None and diff.within(floor.as_tolerance(tol)))
    report = AgreementReport(kind=kind, max_abs_error=diff.max_abs, max_rel_error=diff.max_rel,
                             cosine=float(diff.cosines.min()), mean_cosine=float(diff.cosines.mean()),
                             top1_agreement=diff.top1, samples=int(diff.cosines.size), tolerance=tol, passed=passed,
                             noise_floor=None if floor is None else floor.as_noise_floor())
    if floor is not None and passed:
        logger.warning("%s: %s", onnx_path, report.summary())
    if raise_on_failure and not passed:
        raise UnsupportedModelError(
            f"{onnx_path}: {report.summary()}. Check the layers that were swapped for export (see the log), "
            "compare on more representative inputs, or pass a looser st.Tolerance")
    return report


def _run(model: nn.Module, batch: Any) -> list[np.ndarray]:
    """The model's tensor outputs on one batch, as float32 arrays."""
    try:
        with torch.no_grad():
            out = call(model, batch)
    except Exception as err:
        raise DataError(f"the model failed on the inputs given to check_agreement ({type(err).__name__}: "
                        f"{err}); pass inputs of the shape the model expects") from err
    return [t.detach().float().cpu().numpy() for t in pytree.tree_leaves(out) if isinstance(t, torch.Tensor)]


@dataclasses.dataclass(frozen=True)
class _Difference:
    """How two runs of the same batches differ (the numbers of an :class:`AgreementReport`)."""

    max_abs: float
    max_rel: float
    cosines: np.ndarray
    top1: float | None

    @classmethod
    def of(cls, refs: list[list[np.ndarray]], gots: list[list[np.ndarray]], max_rel_error: float) -> _Difference:
        """Compare ``gots`` with ``refs`` (per batch, per output); ``max_rel_error`` sets the near-tie margin."""
        max_abs = max_rel = 0.0
        cosines, agree, rows, classify = [], 0, 0, True
        for ref, got in zip(refs, gots, strict=True):
            for r, g in zip(ref, got, strict=False):
                err = float(np.abs(r - g).max()) if r.size else 0.0
                max_abs = max(max_abs, err)
                max_rel = max(max_rel, err / max(float(np.abs(r).max()) if r.size else 0.0, 1e-12))
            main_ref, main_got = ref[0], got[0]
            cosines.append(_cosines(main_ref, main_got))
            classify = classify and main_ref.ndim >= 2 and main_ref.shape[-1] > 1
            if classify:
                agree += _top1_agreeing(main_ref, main_got, max_rel_error)
                rows += int(np.prod(main_ref.shape[:-1]))
        cos = np.concatenate(cosines) if cosines else np.ones(1)
        return cls(max_abs, max_rel, cos, agree / rows if classify and rows else None)

    @classmethod
    def worst(cls, draws: list[_Difference]) -> _Difference:
        """The largest deviation of each kind over several draws (per-sample cosines: the smallest)."""
        top1 = [d.top1 for d in draws if d.top1 is not None]
        return cls(max(d.max_abs for d in draws), max(d.max_rel for d in draws),
                   np.minimum.reduce([d.cosines for d in draws]), min(top1) if top1 else None)

    def within(self, tol: Tolerance) -> bool:
        """Whether every bound of ``tol`` is met."""
        return self.max_rel <= tol.max_rel_error and float(self.cosines.min()) >= tol.min_cosine and (
            self.top1 is None or self.top1 >= tol.min_top1)

    def as_tolerance(self, tol: Tolerance) -> Tolerance:
        """Bounds as loose as this noise floor (its deviations times ``FLOOR_SLACK``), never tighter than ``tol``."""
        return Tolerance(max_rel_error=max(tol.max_rel_error, FLOOR_SLACK * self.max_rel),
                         min_cosine=min(tol.min_cosine, 1.0 - FLOOR_SLACK * (1.0 - float(self.cosines.min()))),
                         min_top1=min(tol.min_top1, 1.0 if self.top1 is None else self.top1))

    def as_noise_floor(self) -> NoiseFloor:
        return NoiseFloor(max_rel_error=self.max_rel, cosine=float(self.cosines.min()), top1_agreement=self.top1)


#: units of float rounding (``eps`` of the dtype) the noise floor nudges each layer input by: summing a dot product
#: of tens to thousands of terms in another order, as another runtime does, moves its result by a few units; one
#: unit alone flips almost no int8 code (none in a random MobileNet v2 whose ONNX export differs by cosine 0.989)
NUDGE_ULPS = 4

#: independent nudges the floor is the worst of: one draw is a lottery in a chaotic int8 model (which near-tie codes
#: flip), so a single draw can land just below a disagreement of the same size
NUDGE_DRAWS = 3

#: how much larger than the floor a disagreement may be: the floor is an estimate from a few draws, and where one
#: near-tie code dominates the output, the nudge and the other runtime flip the same code and land on the same
#: deviation to six digits (a random MobileNet v3: cosine 0.973059 both), so an exact bound would be a coin toss
FLOOR_SLACK = 1.5


@contextlib.contextmanager
def _nudged(model: nn.Module, seed: int = 0) -> Iterator[None]:
    """Within the block, every leaf module's floating-point positional inputs are multiplied by
    ``1 +- NUDGE_ULPS * eps`` of the dtype the layer computes in (random sign per element, from ``seed``): what two
    correct runtimes that round differently feed each layer. A layer computes in its input's dtype, or in the one
    its ``input_rounding(x)`` names (weight-only layers on bfloat16-activation kernels)."""
    gen = torch.Generator().manual_seed(seed)

    def nudge(module: nn.Module, args: tuple) -> tuple:
        out = []
        for a in args:
            if isinstance(a, torch.Tensor) and a.is_floating_point() and a.numel():
                rounding = module.input_rounding(a) if hasattr(module, "input_rounding") else a.dtype
                sign = torch.randint(0, 2, a.shape, generator=gen).to(a.device, a.dtype) * 2 - 1
                a = a * (1 + NUDGE_ULPS * torch.finfo(rounding).eps * sign)
            out.append(a)
        return tuple(out)

    handles = [m.register_forward_pre_hook(nudge) for m in model.modules() if not any(True for _ in m.children())]
    try:
        yield
    finally:
        for h in handles:
            h.remove()
