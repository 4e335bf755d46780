"""Unstructured pruning: zero the least important individual weights of Linear and Conv layers.

``scope="global"`` ranks the weights of all chosen layers together (layers with many unimportant weights are
pruned harder); ``scope="layer"`` gives every layer the same sparsity; ``per_layer`` fixes the sparsity of
named layers and the rest follow the scope. Counts are exact: a layer (or the global pool) of ``n`` weights
at sparsity ``s`` gets exactly ``round(s * n)`` zeros, ties broken by position.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import nn

from slimtorch._log import logger
from slimtorch.errors import ConfigError
from slimtorch.handlers import handler
from slimtorch.layer_kinds import masking_reason
from slimtorch.prune import importance as imp
from slimtorch.prune.config import UnstructuredPruning
from slimtorch.prune.masks import MASK, attach_mask, is_masked, make_permanent
from slimtorch.select import last_linear, select
from slimtorch.summary import StepSummary, add_details, last_summary, record

PRUNABLE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def choose_layers(
    model: nn.Module,
    include: Sequence[Any] | None,
    exclude: Sequence[Any],
    prune_head: bool,
    extra_include: Sequence[str] | None = None,
    types: tuple[type[nn.Module], ...] = PRUNABLE,
) -> tuple[list[tuple[str, nn.Module]], dict[str, str]]:
    """The ``(name, layer)`` pairs a weight-pruning config touches: ``types`` (GPT-2's ``Conv1D`` counts as a
    Linear) matching the patterns, without the classifier head unless ``prune_head`` (or the head is named in
    ``include``). A model that is itself one layer (a bare ``nn.Linear``) is that layer, named ``""``.

    Returns:
        ``(chosen, skipped)``: subclasses whose own ``forward`` transforms the weight (so a zero would not
        prune, see :func:`slimtorch.layer_kinds.masking_reason`) are skipped, name -> reason.
    """
    if isinstance(model, types) and not any(True for _ in model.children()):
        return [("", model)], {}
    patterns = None
    if include is not None or extra_include is not None:
        patterns = list(include or []) + list(extra_include or [])
    chosen = select(model, types, patterns, exclude)
    head = last_linear(model)
    if not prune_head and head is not None and (include is None or head not in include):
        chosen = [(n, m) for n, m in chosen if n != head]
    reasons = {n: masking_reason(m) for n, m in chosen}
    return [(n, m) for n, m in chosen if reasons[n] is None], {n: r for n, r in reasons.items() if r is not None}


def layer_scores(
    model: nn.Module,
    layers: list[tuple[str, nn.Module]],
    criterion: str,
    *,
    data: Any,
    calibration_batches: int,
    seed: int,
) -> dict[str, torch.Tensor]:
    """Score every weight of ``layers``; already-pruned weights score -inf so masks only ever grow."""
    grads: list[torch.Tensor | None] = [None] * len(layers)
    if criterion in imp.DATA_CRITERIA:
        weights = [m.weight for _, m in layers]
        grads = imp.accumulate_gradients(model, weights, data, calibration_batches,
                                         movement_score=criterion == "movement")
    out = {}
    for i, ((name, module), grad) in enumerate(zip(layers, grads, strict=True)):
        s = imp.score(criterion, module.weight, grad=grad, seed=seed + i)
        if is_masked(module):
            s = s.masked_fill(~getattr(module, MASK).bool().cpu(), float("-inf"))
        out[name] = s.cpu()
    return out


def lowest_mask(scores: torch.Tensor, n_prune: int) -> torch.Tensor:
    """Bool mask (True = keep) removing exactly the ``n_prune`` lowest scores (ties broken by position)."""
    flat = scores.reshape(-1)
    keep = torch.ones(flat.numel(), dtype=torch.bool)
    if n_prune > 0:
        order = torch.argsort(flat, stable=True)
        keep[order[:n_prune]] = False
    return keep.reshape(scores.shape)


def plan_masks(
    scores: dict[str, torch.Tensor],
    sparsity: float,
    scope: Literal["global", "layer"],
    per_layer: dict[str, float] | None = None,
) -> dict[str, torch.Tensor]:
    """Turn per-weight scores into keep-masks with exact zero counts (pure).

    Args:
        scores: layer name -> scores (the weight's shape).
        sparsity: target fraction of zeros for layers not in ``per_layer``.
        scope: "global" pools the scores of those layers; "layer" applies ``sparsity`` to each.
        per_layer: layer name -> its own sparsity.

    Returns:
        Layer name -> bool mask, True where the weight is kept.
    """
    per_layer = per_layer or {}
    masks = {n: lowest_mask(s, round(per_layer[n] * s.numel())) for n, s in scores.items() if n in per_layer}
    rest = [n for n in scores if n not in per_layer]
    if scope == "layer":
        masks.update({n: lowest_mask(scores[n], round(sparsity * scores[n].numel())) for n in rest})
    elif rest:
        pooled = torch.cat([scores[n].reshape(-1) for n in rest])  # (total weights,)
        keep = lowest_mask(pooled, round(sparsity * pooled.numel()))
        for n, part in zip(rest, keep.split([scores[n].numel() for n in rest]), strict=True):
            masks[n] = part.reshape(scores[n].shape)
    return masks


def report(masks: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Achieved sparsity per layer and overall (fractions 0-1) for a set of keep-masks."""
    per = {n: 1.0 - float(m.sum()) / m.numel() for n, m in masks.items()}
    total = sum(m.numel() for m in masks.values())
    zeros = sum(m.numel() - int(m.sum()) for m in masks.values())
    return {"layers": per, "overall": zeros / total if total else 0.0}


def apply_unstructured(
    model: nn.Module,
    config: UnstructuredPruning,
    *,
    data: Any = None,
    select: Sequence[str] | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Compute and attach the masks of ``config``; returns the sparsity report (see :func:`report`).

    Also records the step's :class:`~slimtorch.summary.StepSummary` (layers masked, layers skipped and why).

    Raises:
        ConfigError: a ``per_layer`` name that is not one of the chosen layers, or no layer to prune.
    """
    layers, skipped = choose_layers(model, config.include, config.exclude, config.prune_head, select)
    names = [n for n, _ in layers]
    if not layers:
        record(model, StepSummary(type(config).__name__, (), skipped))
        raise ConfigError(f"UnstructuredPruning found no Linear/Conv layer to prune (skipped: {skipped or 'none'}); "
                          "check include/exclude")
    unknown = [n for n in (config.per_layer or {}) if n not in names]
    if unknown:
        raise ConfigError(f"UnstructuredPruning.per_layer names {unknown}, which are not chosen layers; "
                          f"choose among {names[:10]}")
    scores = layer_scores(model, layers, config.importance, data=data,
                          calibration_batches=config.calibration_batches, seed=seed)
    masks = plan_masks(scores, config.sparsity, config.scope, config.per_layer)
    for name, module in layers:
        attach_mask(module, masks[name])
        masks[name] = getattr(module, MASK).bool()
    result = report(masks)
    record(model, StepSummary(type(config).__name__, tuple(names), skipped))
    if config.recalibrate_bn and data is not None:
        from slimtorch.prune.channel_scores import recalibrate_batchnorm

        result["bn_batches"] = recalibrate_batchnorm(model, data, config.calibration_batches)
    logger.info("unstructured pruning: %.1f%% of %d layers' weights zero; per layer: %s", 100 * result["overall"],
                len(layers), ", ".join(f"{n} {100 * s:.1f}%" for n, s in result["layers"].items()))
    return result


@handler(UnstructuredPruning)
def _prune(model: nn.Module, config: UnstructuredPruning, *, data: Any, example_inputs: Any,
           select: Sequence[str] | None, seed: int) -> nn.Module:
    result = apply_unstructured(model, config, data=data, select=select, seed=seed)
    if not config.keep_masks or config.kernel == "auto":
        make_permanent(model)
    if config.kernel == "auto":
        from slimtorch.prune.sparse_linear import use_sparse_kernels

        pruned = last_summary(model)
        result["kernels"] = use_sparse_kernels(model, example_inputs, layers=list(result["layers"]))
        record(model, pruned)  # the step's summary is the pruning's; the kernels' was logged
    add_details(model, result)
    return model
