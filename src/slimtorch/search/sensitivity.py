"""Per-layer quantization sensitivity: the model's output error when one layer alone is quantized.

Use it to keep the worst few layers in higher precision (``exclude=`` on the config), by hand or from the
automatic search.
"""

from __future__ import annotations

import copy
import dataclasses
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from slimtorch.config import Config
from slimtorch.data import call, first_tensor, iter_inputs
from slimtorch.errors import ConfigError, DataError
from slimtorch.handlers import HANDLERS, apply


def relative_error(reference: torch.Tensor, output: torch.Tensor) -> float:
    """``||output - reference||^2 / ||reference||^2`` (0 = identical; 1 = as large as the signal)."""
    ref = reference.detach().float()
    return float(((output.detach().float() - ref) ** 2).sum() / (ref**2).sum().clamp(min=1e-20))


@dataclass(frozen=True)
class LayerSensitivity:
    """One layer's result: ``error`` is the relative squared output error (see :func:`relative_error`)."""

    layer: str
    error: float


def quant_sensitivity(
    model: nn.Module, config: Config, data: Any, *, num_batches: int = 4, select: Sequence[str] | None = None
) -> list[LayerSensitivity]:
    """Quantize each layer the config would touch, one at a time, and measure the model's output error.

    The model is not changed (each trial works on a copy).

    Args:
        model: the float model.
        config: a quantization config with ``include``/``exclude`` fields (StaticQuant, DynamicQuant,
            WeightOnlyQuant).
        data: batches (a loader or an iterable); the first ``num_batches`` are used for the error and, for
            StaticQuant, for calibration.
        num_batches: batches to evaluate on.
        select: include patterns restricting the layers.

    Returns:
        One :class:`LayerSensitivity` per layer, most sensitive first.

    Raises:
        ConfigError: the config cannot be restricted to one layer, or chooses no layer.
        DataError: the data yields no batch.
    """
    from slimtorch.quant.ptq import chosen_layers

    if "include" not in {f.name for f in dataclasses.fields(config)} or type(config) not in HANDLERS:
        raise ConfigError(f"quant_sensitivity: {type(config).__name__} has no include field to test layers one "
                          "at a time; use StaticQuant, DynamicQuant or WeightOnlyQuant")
    batches = list(iter_inputs(data, num_batches))
    if not batches:
        raise DataError("quant_sensitivity: the data yielded no batch; pass a DataLoader or a list of batches")
    model = model.eval()
    with torch.no_grad():
        reference = [first_tensor(call(model, b)) for b in batches]
    names = [n for n, _ in chosen_layers(model, config, [nn.Linear, nn.Conv2d], select)[0]]
    if not names:
        raise ConfigError(f"quant_sensitivity: {type(config).__name__} chooses no layer; check include/exclude")
    results = []
    for name in names:
        trial = dataclasses.replace(config, include=(f"re:{re.escape(name)}",))
        if hasattr(trial, "calibration_batches"):
            trial = dataclasses.replace(trial, calibration_batches=min(trial.calibration_batches, len(batches)))
        try:
            q = apply("quantize", copy.deepcopy(model), trial, data=batches)
        except ConfigError:
            continue  # a layer this method cannot take (e.g. a subclass with a forward of its own, alone)
        with torch.no_grad():
            errors = [relative_error(r, first_tensor(call(q, b))) for r, b in zip(reference, batches, strict=True)]
        results.append(LayerSensitivity(name, sum(errors) / len(errors)))
    return sorted(results, key=lambda r: r.error, reverse=True)
