"""Data adapters: turn whatever the user passes (a data loader, the zoo's data object, a tensor, a list of
batches) into model inputs and targets, and call a model on them.

A batch is understood as:
- a tensor: the model input, no target;
- a dict: keyword inputs (a Hugging Face batch); ``labels`` is taken as the target if present;
- a tuple or list ``(inputs, target)``: the usual ``(x, y)`` of a supervised loader; with more than two
  items, all but the last are positional inputs.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from torch import nn

from slimtorch.errors import DataError

Inputs = torch.Tensor | tuple | dict


def as_loader(data: Any, split: str = "train") -> Iterable:
    """Return an iterable of batches from a loader, a zoo data object (``.train``/``.test``) or a tensor.

    Raises:
        DataError: ``data`` is None or not iterable.
    """
    if data is None:
        raise DataError("this step needs data: pass data=<a DataLoader, a list of batches or a zoo data object>")
    if hasattr(data, split) and not isinstance(data, torch.Tensor):
        return getattr(data, split)
    if isinstance(data, torch.Tensor):
        return [data]
    if not isinstance(data, Iterable):
        raise DataError(f"data must be iterable (a DataLoader or a list of batches), got {type(data).__name__}")
    return data


def split_batch(batch: Any) -> tuple[Inputs, torch.Tensor | None]:
    """Split one batch into ``(inputs, target)``; target is None for an unlabelled batch."""
    if isinstance(batch, torch.Tensor):
        return batch, None
    if isinstance(batch, dict):
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        return inputs, batch.get("labels")
    if isinstance(batch, tuple | list):
        if len(batch) == 0:
            raise DataError("an empty batch was given")
        if len(batch) == 1:
            return batch[0], None
        if len(batch) == 2:
            return batch[0], batch[1]
        return tuple(batch[:-1]), batch[-1]
    raise DataError(f"cannot read a batch of type {type(batch).__name__}; use tensors, (x, y) tuples or dicts")


def iter_inputs(data: Any, num_batches: int | None = None, split: str = "train") -> Iterator[Inputs]:
    """Yield model inputs (targets dropped) from at most ``num_batches`` batches of ``data``.

    Raises:
        DataError: a batch's floating-point inputs hold NaN or Inf (calibration statistics from them are NaN).
    """
    batches = iter(as_loader(data, split))
    if num_batches is not None:
        batches = itertools.islice(batches, num_batches)
    for index, batch in enumerate(batches):
        inputs = split_batch(batch)[0]
        _check_finite_inputs(inputs, index)
        yield inputs


def _check_finite_inputs(inputs: Inputs, index: int) -> None:
    tensors = inputs.values() if isinstance(inputs, dict) else inputs if isinstance(inputs, tuple) else [inputs]
    for t in tensors:
        if not isinstance(t, torch.Tensor) or not t.is_floating_point() or t.is_meta:
            continue
        if not bool(torch.isfinite(t).all()):
            nans, infs = int(torch.isnan(t).sum()), int(torch.isinf(t).sum())
            raise DataError(f"batch {index + 1} of the data holds {nans} NaN and {infs} Inf input values; clean "
                            "the data (or drop those samples) before calibrating or compressing")


def call(model: nn.Module, inputs: Inputs) -> Any:
    """Call ``model`` on inputs as a tensor, a tuple of positional inputs or a dict of keyword inputs."""
    if isinstance(inputs, dict):
        return model(**inputs)
    if isinstance(inputs, tuple):
        return model(*inputs)
    return model(inputs)


def run_hooked(
    model: nn.Module,
    batches: Iterable[Inputs],
    *,
    pre: dict[nn.Module, Callable[..., Any]] | None = None,
    post: dict[nn.Module, Callable[..., Any]] | None = None,
) -> int:
    """Run ``batches`` through ``model`` without gradients, with forward pre-hooks (``fn(module, args)``) and
    forward hooks (``fn(module, args, output)``) on the given submodules, removed afterwards whatever happens.

    Returns:
        The number of batches run.
    """
    handles = [m.register_forward_pre_hook(fn) for m, fn in (pre or {}).items()]
    handles += [m.register_forward_hook(fn) for m, fn in (post or {}).items()]
    seen = 0
    try:
        with torch.no_grad():
            for inputs in batches:
                call(model, inputs)
                seen += 1
    finally:
        for h in handles:
            h.remove()
    return seen


def first_tensor(output: Any) -> torch.Tensor:
    """The main tensor of a model output: itself, the first item of a tuple, or ``logits`` of an HF output."""
    if isinstance(output, torch.Tensor):
        return output
    if hasattr(output, "logits"):
        return output.logits
    if isinstance(output, dict):
        return first_tensor(next(iter(output.values())))
    if isinstance(output, tuple | list) and output:
        return first_tensor(output[0])
    raise DataError(f"cannot find a tensor in the model output of type {type(output).__name__}")


def batch_size(inputs: Inputs) -> int:
    """Size of the leading dimension of the first input tensor."""
    if isinstance(inputs, dict):
        inputs = next(iter(inputs.values()))
    if isinstance(inputs, tuple):
        inputs = inputs[0]
    return int(inputs.shape[0]) if isinstance(inputs, torch.Tensor) and inputs.dim() else 1
