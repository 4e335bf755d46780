"""N:M semi-structured pruning: in every group of M consecutive weights along the input dimension, keep the
N most important and zero the rest (2:4 is the pattern of sparse tensor cores).

The input dimension of a Linear weight ``(out, in)`` is ``in``; for a convolution ``(out, in, *kernel)`` the
groups run along the flattened ``in * kernel`` axis of each filter, the reduction axis of its GEMM. GPT-2's
``Conv1D`` stores its weight ``(in, out)``: its groups run along dim 0. A layer whose input size is not a
multiple of M is left dense (and named in the log, the report and the step's summary).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from slimtorch._log import logger
from slimtorch.errors import ConfigError
from slimtorch.handlers import handler
from slimtorch.layer_kinds import is_transposed_linear
from slimtorch.prune.config import NMPruning
from slimtorch.prune.masks import MASK, attach_mask, make_permanent
from slimtorch.prune.unstructured import choose_layers, layer_scores, report
from slimtorch.summary import StepSummary, add_details, record


def output_first(module: nn.Module, tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` (the shape of ``module``'s weight) with the output axis first, as :func:`nm_mask` and
    :func:`nm_violations` take it: GPT-2's ``Conv1D`` weight ``(in, out)`` is transposed (a view, so applying
    it twice gives the original layout back); other layers' weights already are ``(out, in, *kernel)``."""
    return tensor.t() if is_transposed_linear(module) else tensor


def input_size(module: nn.Module) -> int:
    """Weights per output (the GEMM's reduction size) of a Linear, Conv or GPT-2 ``Conv1D`` layer."""
    return output_first(module, module.weight)[0].numel()


def nm_mask(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Bool keep-mask with the ``n`` highest scores of every ``m`` consecutive entries along the input axis.

    Args:
        scores: ``(out, in, *kernel)`` scores; ``in * prod(kernel)`` must be a multiple of ``m``.

    Returns:
        A bool tensor of ``scores``' shape (ties broken by position, earlier kept).
    """
    rows = scores.reshape(scores.shape[0], -1)  # (out, K) with K = in * prod(kernel)
    if rows.shape[1] % m:
        raise ValueError(f"input size {rows.shape[1]} is not a multiple of m={m}")
    groups = rows.reshape(-1, m)  # (out * K / m, m)
    order = torch.argsort(groups, dim=1, descending=True, stable=True)
    keep = torch.zeros_like(groups, dtype=torch.bool)
    keep.scatter_(1, order[:, :n], True)
    return keep.reshape(scores.shape)


def nm_violations(weight: torch.Tensor, n: int, m: int) -> int:
    """Number of ``m``-groups along the input axis of ``weight`` holding more than ``n`` non-zeros."""
    rows = weight.detach().reshape(weight.shape[0], -1)
    if rows.shape[1] % m:
        raise ValueError(f"input size {rows.shape[1]} is not a multiple of m={m}")
    return int(((rows.reshape(-1, m) != 0).sum(1) > n).sum())


def check_nm(model: nn.Module, n: int, m: int, layers: Sequence[str]) -> None:
    """Verify that every named layer holds at most ``n`` non-zeros per ``m``-group.

    Raises:
        ConfigError: naming the first layer that breaks the pattern and how many groups do.
    """
    for name in layers:
        module = model.get_submodule(name)
        bad = nm_violations(output_first(module, module.weight), n, m)
        if bad:
            raise ConfigError(f"layer {name!r} breaks the {n}:{m} pattern in {bad} groups; prune it again "
                              "with NMPruning or keep its masks during fine-tuning")


@handler(NMPruning)
def _prune(model: nn.Module, config: NMPruning, *, data: Any, example_inputs: Any,
           select: Sequence[str] | None, seed: int) -> nn.Module:
    layers, refused = choose_layers(model, config.include, config.exclude, config.prune_head, select)
    fits = [(n, mod) for n, mod in layers if input_size(mod) % config.m == 0]
    skipped = [n for n, mod in layers if input_size(mod) % config.m]
    if skipped:
        logger.warning("N:M pruning left %s dense: their input size is not a multiple of m=%d", skipped, config.m)
    refused.update({n: f"input size {input_size(mod)} is not a multiple of m={config.m}" for n, mod in layers
                    if n in skipped})
    summary = record(model, StepSummary(type(config).__name__, tuple(n for n, _ in fits), refused))
    if not fits:
        raise ConfigError(f"NMPruning found no Linear/Conv layer whose input size is a multiple of m={config.m} "
                          f"(skipped {dict(summary.skipped)}); choose another m or other layers")
    scores = layer_scores(model, fits, config.importance, data=data,
                          calibration_batches=config.calibration_batches, seed=seed)
    masks = {name: output_first(mod, nm_mask(output_first(mod, scores[name]), config.n, config.m))
             for name, mod in fits}
    for name, module in fits:
        attach_mask(module, masks[name])
        masks[name] = getattr(module, MASK).bool()
    check_nm(model, config.n, config.m, list(masks))
    result = report(masks)
    result["skipped"] = skipped
    if config.recalibrate_bn and data is not None:
        from slimtorch.prune.channel_scores import recalibrate_batchnorm

        result["bn_batches"] = recalibrate_batchnorm(model, data, config.calibration_batches)
    logger.info("%d:%d pruning: %.1f%% zero over %d layers", config.n, config.m, 100 * result["overall"], len(fits))
    if not config.keep_masks:
        make_permanent(model)
    add_details(model, result)
    return model
