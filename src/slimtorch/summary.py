"""What one compression step did: the layers it changed, the ones it skipped with the reason for each, and the
step's own facts (per-layer sparsities, ranks, kernels chosen).

Every family records a :class:`StepSummary` with :func:`record`; the last one is kept on the model as
``model.__dict__["slimtorch_summary"]`` (read it with :func:`last_summary`), the one place where what a step did
is kept. Recording logs one named line per skipped layer and a warning when the step changed almost nothing it
was pointed at; :func:`add_details` adds facts known only later in the step, without logging again.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from slimtorch._log import logger

#: below this share of changed layers (among changed + skipped) a step warns that it changed almost nothing
LITTLE = 0.1

_KEY = "slimtorch_summary"


@dataclass(frozen=True)
class StepSummary:
    """One step's effect.

    Attributes:
        step: the config's class name.
        changed: names of the layers the step changed.
        skipped: names of the layers it was pointed at but left alone, each mapped to the reason.
        details: the step's own facts, by family. Unstructured, N:M and scheduled pruning: ``layers`` (name ->
            fraction of zero weights, 0-1), ``overall`` (fraction over those layers), ``skipped`` (N:M: layers
            whose input width is not a multiple of m), ``kernels`` (``kernel="auto"``: per layer, the kernel
            chosen and its timings), ``rounds`` (iterative: overall sparsity after each round), ``bn_batches``
            (batches BatchNorm statistics were re-estimated on). Low rank: ``layers``, one row per candidate
            layer (``name``, ``method``, ``status`` "decomposed" or "left dense", ``rank``, ``params_before``,
            ``params_after`` or ``reason``). Static int8: ``equalized`` (``[producer, consumer]`` layer pairs),
            ``bias_correction`` (layer -> largest per-channel mean shift removed), ``adaround`` (layer ->
            ``{"loss_nearest", "loss", "iterations"}``), each only when the config asked for it.
    """

    step: str
    changed: tuple[str, ...] = ()
    skipped: Mapping[str, str] = field(default_factory=dict)
    details: Mapping[str, Any] = field(default_factory=dict)

    @property
    def changed_share(self) -> float:
        """Changed layers as a fraction (0-1) of the layers the step considered; 1.0 when it considered none."""
        total = len(self.changed) + len(self.skipped)
        return len(self.changed) / total if total else 1.0


def record(model: nn.Module, summary: StepSummary) -> StepSummary:
    """Keep ``summary`` on ``model`` as its last step, log each skipped layer and warn if little changed.

    Returns:
        ``summary``.
    """
    for name, reason in summary.skipped.items():
        logger.info("%s: skipped %s (%s)", summary.step, name or "<model>", reason)
    if summary.skipped and summary.changed_share < LITTLE:
        logger.warning("%s changed only %d of %d layers it was pointed at; %d were skipped (see the reasons above, "
                       "or slimtorch.summary.last_summary(model).skipped)", summary.step, len(summary.changed),
                       len(summary.changed) + len(summary.skipped), len(summary.skipped))
    model.__dict__[_KEY] = summary
    return summary


def last_summary(model: nn.Module) -> StepSummary | None:
    """The summary of the last step applied to ``model``, or None if no step recorded one."""
    return model.__dict__.get(_KEY)


def add_details(model: nn.Module, details: Mapping[str, Any], step: str | None = None) -> StepSummary:
    """Merge ``details`` into the summary of the step last recorded on ``model`` (renamed ``step`` when given),
    without logging its skipped layers again; a model with no summary yet gets one naming ``step``.

    Returns:
        The summary now kept on the model.
    """
    last = last_summary(model) or StepSummary(step or "")
    summary = dataclasses.replace(last, step=step or last.step, details={**last.details, **details})
    model.__dict__[_KEY] = summary
    return summary
