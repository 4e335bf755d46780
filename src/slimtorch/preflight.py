"""What every verb checks on a model before it changes anything: lazy modules are materialised (their
parameters get shapes from one forward on the example inputs), and every floating-point parameter and buffer
is finite (scales, importances and factorizations computed from a NaN are NaN everywhere)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn.modules.lazy import LazyModuleMixin

from slimtorch.data import call
from slimtorch.errors import DataError, UnsupportedModelError


def lazy_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` of the submodules whose parameters are still uninitialized (``nn.LazyLinear`` before its
    first call); the model itself is named ``""``."""
    return [(name, m) for name, m in model.named_modules()
            if isinstance(m, LazyModuleMixin) and m.has_uninitialized_params()]


def materialize(model: nn.Module, example_inputs: Any) -> nn.Module:
    """Give lazy modules their shapes with one forward on ``example_inputs`` (no gradients, eval mode, the mode
    restored); a model without uninitialized lazy parameters is left alone and not called.

    Args:
        model: the model (its lazy modules become their plain classes, e.g. ``LazyLinear`` -> ``Linear``).
        example_inputs: a tensor, a tuple of positional inputs or a dict of keyword inputs; may be None when the
            model has no lazy modules.

    Returns:
        The same model.

    Raises:
        UnsupportedModelError: the model has uninitialized lazy parameters and no example inputs were given, or
            the forward on them failed; the message names the lazy module.
    """
    lazy = lazy_modules(model)
    if not lazy:
        return model
    name, module = lazy[0]
    where = f"layer {name or '(the model)'!r} ({type(module).__name__})"
    if example_inputs is None:
        raise UnsupportedModelError(f"{where} has uninitialized lazy parameters: pass example_inputs= so one forward "
                                    "can give them their shapes")
    was_training = model.training
    try:
        with torch.no_grad():
            call(model.eval(), example_inputs)
    except Exception as err:  # the user's model failed on the user's inputs: say which
        raise UnsupportedModelError(f"{where} has uninitialized lazy parameters and the forward that would set them "
                                    f"failed on the example inputs ({type(err).__name__}: {err})") from err
    finally:
        model.train(was_training)
    return model


def check_finite(model: nn.Module) -> None:
    """Refuse a model holding NaN or Inf in a floating-point parameter, or NaN in a floating-point buffer, naming
    the first one. Buffers may hold infinities: a causal attention mask of ``-inf`` is a legitimate buffer.

    Costs one ``torch.isfinite(t).all()`` (buffers: ``torch.isnan(t).any()``) per tensor; uninitialized lazy and
    meta tensors are skipped.

    Raises:
        DataError: a tensor holds NaN or Inf values (the message counts them and names the tensor).
    """
    tensors = [(name, t, True) for name, t in model.named_parameters()]
    tensors += [(name, t, False) for name, t in model.named_buffers()]
    for name, t, is_param in tensors:
        if (isinstance(t, nn.parameter.UninitializedTensorMixin) or not t.is_floating_point() or t.is_meta
                or t.layout != torch.strided):
            continue
        if not bool(torch.isfinite(t).all()) if is_param else bool(torch.isnan(t).any()):
            nans, infs = int(torch.isnan(t).sum()), int(torch.isinf(t).sum())
            raise DataError(f"layer {name!r} holds {nans} NaN and {infs} Inf values; fix or remove them before "
                            "compressing")
