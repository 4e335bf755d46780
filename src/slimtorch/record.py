"""What a compression run did, as plain typed records: the metrics before and after, and one entry per stage
(its config, time, metrics and per-layer facts). ``slimtorch.pipeline`` fills them; the report, the CLI and
``st.compress`` (``model.slimtorch_record``) read them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from slimtorch.measure.metrics import Metrics


@dataclass
class StageRecord:
    """What one stage did: its config, time taken, and the model's metrics and layers after it."""

    index: int
    stage: str
    method: str
    config: dict[str, Any]
    seconds: float
    metrics: dict[str, Any] | None
    layers: list[dict[str, Any]]

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able values."""
        return dict(self.__dict__)


@dataclass
class RunRecord:
    """A whole run: metrics before and after, the stages, the recipe, and the files written (name -> path:
    ``safetensors``, ``onnx``, ``json``, ``md``, ``html``, plots; filled at the end of ``st.compress``)."""

    recipe: dict[str, Any]
    before: Metrics | None = None
    after: Metrics | None = None
    stages: list[StageRecord] = field(default_factory=list)
    layers_before: list[dict[str, Any]] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """``before``/``after`` (``Metrics.to_dict()``), ``stages`` (one per stage), ``recipe``, layers."""
        return {
            "recipe": self.recipe,
            "before": self.before.to_dict() if self.before else None,
            "after": self.after.to_dict() if self.after else None,
            "stages": [s.to_dict() for s in self.stages],
            "layers_before": self.layers_before,
            "files": self.files,
        }
