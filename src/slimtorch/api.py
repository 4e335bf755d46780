"""The verbs. Each is a lookup from the config's type to the handler its family registered.

Every verb changes the model it is given in place and returns it (as ``nn.Module.to`` does); deep-copy the
model first to keep the original.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from torch import nn

from slimtorch.config import REGISTRY, Config
from slimtorch.errors import ConfigError, UnsupportedModelError

Handler = Callable[..., nn.Module]

#: config class -> function(model, config, *, data, example_inputs, select, seed) -> model
HANDLERS: dict[type[Config], Handler] = {}


def handler(config_cls: type[Config]) -> Callable[[Handler], Handler]:
    """Decorator a family uses to register the function that applies ``config_cls``."""

    def wrap(fn: Handler) -> Handler:
        HANDLERS[config_cls] = fn
        return fn

    return wrap


def _apply(stage: str, model: nn.Module, config: Config, **kwargs: Any) -> nn.Module:
    if not isinstance(model, nn.Module):
        raise UnsupportedModelError(f"{stage}() needs a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(config, Config) or config.stage != stage:
        allowed = sorted(c.__name__ for c in REGISTRY.get(stage, {}).values())
        raise ConfigError(f"{stage}() takes one of {allowed} as config, got {type(config).__name__}")
    fn = HANDLERS.get(type(config))
    if fn is None:
        raise ConfigError(f"{type(config).__name__} has no handler registered; is its family installed?")
    out = fn(model, config, **kwargs)
    return model if out is None else out


def prune(
    model: nn.Module,
    config: Config,
    *,
    data: Any = None,
    example_inputs: Any = None,
    select: Sequence[str] | None = None,
    seed: int = 0,
) -> nn.Module:
    """Prune ``model`` in place with a pruning config; returns the model.

    Args:
        model: the model to prune (changed in place).
        config: ``UnstructuredPruning``, ``NMPruning``, ``StructuredPruning``, ``LayerPruning``, ...
        data: calibration data (a loader or zoo data) for data-driven importance.
        example_inputs: inputs for a real forward pass (structured pruning traces the graph with them).
        select: include patterns restricting which layers are touched (see ``slimtorch.select``).
        seed: seed for every random choice.

    Returns:
        The same model object, pruned.
    """
    return _apply("prune", model, config, data=data, example_inputs=example_inputs, select=select, seed=seed)


def decompose(
    model: nn.Module,
    config: Config,
    *,
    data: Any = None,
    example_inputs: Any = None,
    select: Sequence[str] | None = None,
    seed: int = 0,
) -> nn.Module:
    """Replace layers of ``model`` in place by low-rank factorizations; returns the model."""
    return _apply("decompose", model, config, data=data, example_inputs=example_inputs, select=select, seed=seed)


def quantize(
    model: nn.Module,
    config: Config,
    *,
    data: Any = None,
    example_inputs: Any = None,
    select: Sequence[str] | None = None,
    seed: int = 0,
) -> nn.Module:
    """Quantize ``model`` in place with a quantization config; returns the model."""
    return _apply("quantize", model, config, data=data, example_inputs=example_inputs, select=select, seed=seed)
