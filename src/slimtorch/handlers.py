"""The config -> handler registry, and applying one config to a model.

Each family registers the function that applies its config classes (``@handler(StaticQuant)``); the verbs
(``slimtorch.api``) and the recipe runner (``slimtorch.pipeline``) both apply a config through :func:`apply`. It
lives on the bottom floor, beside ``config``, so that a family registers without importing the verbs above it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from slimtorch.config import REGISTRY, Config
from slimtorch.data import iter_inputs
from slimtorch.errors import ConfigError, UnsupportedModelError
from slimtorch.preflight import check_finite, lazy_modules, materialize

Handler = Callable[..., nn.Module]

#: config class -> function(model, config, *, data, example_inputs, select, seed) -> model
HANDLERS: dict[type[Config], Handler] = {}


def handler(config_cls: type[Config]) -> Callable[[Handler], Handler]:
    """Decorator a family uses to register the function that applies ``config_cls``."""

    def wrap(fn: Handler) -> Handler:
        HANDLERS[config_cls] = fn
        return fn

    return wrap


def apply(stage: str, model: nn.Module, config: Config, **kwargs: Any) -> nn.Module:
    """Apply ``config`` (a config of ``stage``: "prune", "decompose", "quantize", "finetune") to ``model`` in place
    through its registered handler, after the checks every verb makes (lazy modules materialised on the example
    inputs or the first batch of data, weights finite).

    Args:
        stage: the verb's name; ``config`` must belong to it.
        model: the model (changed in place).
        config: the config to apply.
        **kwargs: passed to the handler: ``data``, ``example_inputs``, ``select``, ``seed``, and what a stage's
            handler takes beyond those (``teacher``, ``eval_fn``, ... for fine-tuning).

    Returns:
        The model (the handler's return value when it gives one).

    Raises:
        UnsupportedModelError: ``model`` is not an ``nn.Module``.
        ConfigError: ``config`` is not a config of ``stage``, or no handler is registered for its class.
        DataError: the model holds NaN or Inf weights.
    """
    if not isinstance(model, nn.Module):
        raise UnsupportedModelError(f"{stage}() needs a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(config, Config) or config.stage != stage:
        allowed = sorted(c.__name__ for c in REGISTRY.get(stage, {}).values())
        raise ConfigError(f"{stage}() takes one of {allowed} as config, got {type(config).__name__}")
    fn = HANDLERS.get(type(config))
    if fn is None:
        raise ConfigError(f"{type(config).__name__} has no handler registered; is its family installed?")
    example = kwargs.get("example_inputs")
    if example is None and kwargs.get("data") is not None and lazy_modules(model):
        example = next(iter_inputs(kwargs["data"], 1), None)  # the first batch gives lazy layers their shapes
    materialize(model, example)
    check_finite(model)
    out = fn(model, config, **kwargs)
    return model if out is None else out
