"""What one compression step did: the layers it changed and the ones it skipped, with the reason for each.

Every family that picks layers records a :class:`StepSummary` with :func:`record`; the last one is kept on the
model as ``model.__dict__["slimtorch_summary"]`` (read it with :func:`last_summary`). Recording logs one named
line per skipped layer and a warning when the step changed almost nothing it was pointed at.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from torch import nn

from slimtorch._log import logger

#: below this share of changed layers (among changed + skipped) a step warns that it changed almost nothing
LITTLE = 0.1

_KEY = "slimtorch_summary"


@dataclass(frozen=True)
class StepSummary:
    """One step's effect: ``step`` (the config's class name), ``changed`` layer names and ``skipped`` layer
    names mapped to the reason each was left alone."""

    step: str
    changed: tuple[str, ...] = ()
    skipped: Mapping[str, str] = field(default_factory=dict)

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
