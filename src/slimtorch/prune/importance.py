"""Weight importance criteria, as pure functions on tensors (higher score = more important, keep it).

Every function returns a float32 tensor of the same shape as the weight it scores, one score per weight:

- :func:`l1` ``|w|`` and :func:`l2` ``w^2``: magnitude (the two rank the weights of one tensor identically;
  they differ once scores of several tensors are summed).
- :func:`random_scores`: a seeded baseline, the same seed giving the same scores.
- :func:`taylor`: first-order Taylor ``|w * dL/dw|`` (Molchanov et al., 2017), from a gradient accumulated
  over calibration batches (:func:`accumulate_gradients` runs that data pass).
- :func:`movement`: ``-sum_t w_t * dL/dw_t`` (Sanh et al., 2020): weights moving away from zero during
  fine-tuning score high, those moving towards zero score low.

Group-level (structured) scores can reuse these: score the weight elementwise, then sum over the entries that
belong to one channel or head, e.g. ``l1(w).reshape(out, -1).sum(1)`` for the output channels of a conv, or
``taylor(w, g).sum(dim=(1, 2, 3))``. Summing ``l2`` scores and taking the square root gives the group norm.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from slimtorch.data import as_loader, call, first_tensor, split_batch
from slimtorch.errors import DataError

Criterion = Literal["l1", "l2", "random", "taylor", "movement"]
#: criteria that need gradients from calibration data
DATA_CRITERIA = ("taylor", "movement")


def l1(weight: torch.Tensor) -> torch.Tensor:
    """Magnitude score ``|w|`` for every weight."""
    return weight.detach().float().abs()


def l2(weight: torch.Tensor) -> torch.Tensor:
    """Squared-magnitude score ``w^2`` for every weight (sum over a group, then sqrt, for a group L2 norm)."""
    return weight.detach().float().pow(2)


def random_scores(weight: torch.Tensor, seed: int) -> torch.Tensor:
    """Uniform random scores in [0, 1) of ``weight``'s shape; the same ``seed`` gives the same scores."""
    gen = torch.Generator().manual_seed(int(seed))
    return torch.rand(weight.shape, generator=gen)


def taylor(weight: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """First-order Taylor score ``|w * g|``: the estimated loss change from zeroing each weight.

    Args:
        weight: the layer weight.
        grad: dL/dw accumulated (summed) over calibration batches, same shape as ``weight``.
    """
    if grad.shape != weight.shape:
        raise ValueError(f"gradient shape {tuple(grad.shape)} does not match weight shape {tuple(weight.shape)}")
    return (weight.detach().float() * grad.detach().float()).abs()


def movement(weight: torch.Tensor, accumulated: torch.Tensor) -> torch.Tensor:
    """Movement score from ``accumulated = sum_t (-w_t * g_t)`` (see :func:`movement_step`).

    With no fine-tuning history, one accumulation over calibration data is the score after an infinitesimal
    gradient-descent step: weights the loss pushes towards zero score lowest.
    """
    if accumulated.shape != weight.shape:
        raise ValueError(f"movement shape {tuple(accumulated.shape)} does not match weight {tuple(weight.shape)}")
    return accumulated.detach().float().clone()


def movement_step(weight: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """One step's contribution ``-w * g`` to the movement score (add it up over fine-tuning steps)."""
    return -(weight.detach().float() * grad.detach().float())


def score(
    criterion: Criterion,
    weight: torch.Tensor,
    *,
    grad: torch.Tensor | None = None,
    seed: int = 0,
) -> torch.Tensor:
    """Score ``weight`` with a named criterion.

    Args:
        criterion: "l1", "l2", "random", "taylor" or "movement".
        weight: the weight tensor.
        grad: for "taylor", the accumulated gradient; for "movement", the accumulated ``-w * g``.
        seed: for "random".

    Returns:
        A float32 tensor of scores, the shape of ``weight``.

    Raises:
        DataError: a data-driven criterion without its gradient.
    """
    if criterion == "l1":
        return l1(weight)
    if criterion == "l2":
        return l2(weight)
    if criterion == "random":
        return random_scores(weight, seed)
    if grad is None:
        raise DataError(f"importance {criterion!r} needs gradients: pass data= (calibration batches with labels)")
    return taylor(weight, grad) if criterion == "taylor" else movement(weight, grad)


def accumulate_gradients(
    model: nn.Module,
    weights: Sequence[torch.Tensor],
    data: Any,
    num_batches: int,
    *,
    movement_score: bool = False,
) -> list[torch.Tensor]:
    """Sum dL/dw (or ``-w * dL/dw`` with ``movement_score``) of ``weights`` over calibration batches.

    The loss is cross-entropy against the labels when batches carry them, else the squared norm of the output
    (a label-free proxy). The model's own ``.grad`` fields and training mode are left as they were.

    Args:
        model: the model the weights belong to.
        weights: the parameters to accumulate for.
        data: a loader or zoo data object (its calibration loader is used when present).
        num_batches: how many batches to run.

    Returns:
        One float32 tensor per weight.

    Raises:
        DataError: no data, or no batch could be read.
    """
    loader = as_loader(data, "calibration") if hasattr(data, "calibration") else as_loader(data)
    sums = [torch.zeros(w.shape, dtype=torch.float32, device=w.device) for w in weights]
    saved = [w.grad for w in weights]
    flags = [w.requires_grad for w in weights]
    was_training = model.training
    model.eval()  # BN/dropout as at inference: the scores describe the deployed model
    seen = 0
    try:
        for w in weights:
            w.requires_grad_(True)
        for batch in loader:
            if seen >= num_batches:
                break
            inputs, target = split_batch(batch)
            out = first_tensor(call(model, inputs))
            loss = F.cross_entropy(out, target) if target is not None else out.float().pow(2).mean()
            grads = torch.autograd.grad(loss, list(weights), allow_unused=True)
            for i, (w, g) in enumerate(zip(weights, grads, strict=True)):
                if g is not None:
                    sums[i] += movement_step(w, g) if movement_score else g.detach().float()
            seen += 1
    finally:
        for w, g, f in zip(weights, saved, flags, strict=True):
            w.grad = g
            w.requires_grad_(f)
        model.train(was_training)
    if seen == 0:
        raise DataError("the calibration data yielded no batch; data-driven importance needs at least one")
    return sums
