"""Measuring models: size, parameters, FLOPs, latency, peak memory and accuracy, before and after."""

from slimtorch.measure.compare import Comparison, compare
from slimtorch.measure.metrics import Metrics, measure

__all__ = ["Comparison", "Metrics", "compare", "measure"]
