"""The handlers of the pruning schedules that fine-tune (``IterativePruning``, ``GradualPruning``): they live here,
above the pruning family, because they train; the schedules' math is in :mod:`slimtorch.prune.schedule`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from torch import nn

from slimtorch._log import logger
from slimtorch.data import as_loader
from slimtorch.errors import ConfigError, DataError
from slimtorch.handlers import handler
from slimtorch.prune.channel_scores import recalibrate_batchnorm
from slimtorch.prune.config import GradualPruning, IterativePruning, _Scheduled
from slimtorch.prune.masks import MASK
from slimtorch.prune.schedule import GradualPruner, iterative_sparsities
from slimtorch.prune.unstructured import apply_unstructured, choose_layers, report
from slimtorch.summary import add_details
from slimtorch.train.finetune import Finetune, finetune, frozen_copy


def _steps_per_epoch(data: Any, max_batches: int | None) -> int:
    loader = as_loader(data, "train")
    try:
        n = len(loader)
    except TypeError:
        raise DataError("GradualPruning needs a training loader with a length (a DataLoader or a list of "
                        "batches) to lay out its schedule") from None
    return min(n, max_batches) if max_batches is not None else n


def _finetune_config(cfg: _Scheduled, epochs: int) -> Finetune:
    return Finetune(epochs=epochs, lr=cfg.lr, distill=cfg.distill, max_batches=cfg.max_batches)


@handler(IterativePruning)
def _iterative(model: nn.Module, config: IterativePruning, *, data: Any, example_inputs: Any,
               select: Sequence[str] | None, seed: int) -> nn.Module:
    if data is None:
        raise DataError("IterativePruning fine-tunes between rounds: pass data= (a labelled training loader)")
    teacher = frozen_copy(model) if config.distill else None
    rounds = []
    for k, target in enumerate(iterative_sparsities(config.sparsity, config.rounds)):
        result = apply_unstructured(model, config.pruning(target), data=data, select=select, seed=seed)
        finetune(model, _finetune_config(config, config.epochs_per_round), data=data, teacher=teacher, seed=seed + k)
        rounds.append(result["overall"])
        logger.info("iterative pruning round %d/%d: %.1f%% zero", k + 1, config.rounds, 100 * result["overall"])
    result["rounds"] = rounds
    add_details(model, result, step=type(config).__name__)
    return model


@handler(GradualPruning)
def _gradual(model: nn.Module, config: GradualPruning, *, data: Any, example_inputs: Any,
             select: Sequence[str] | None, seed: int) -> nn.Module:
    if data is None:
        raise DataError("GradualPruning prunes while fine-tuning: pass data= (a labelled training loader)")
    teacher = frozen_copy(model) if config.distill else None
    # the layers it skips are recorded (summary, log) by apply_unstructured below
    layers, _ = choose_layers(model, config.include, config.exclude, config.prune_head, select)
    if not layers:
        raise ConfigError("GradualPruning found no Linear/Conv layer to prune; check include/exclude")
    first = config.pruning(config.initial_sparsity)
    if config.initial_sparsity == 0:  # masks of ones: no need for a data pass
        first = dataclasses.replace(first, importance="l1")
    apply_unstructured(model, first, data=data, select=select, seed=seed)
    total = config.epochs * _steps_per_epoch(data, config.max_batches)
    pruner = GradualPruner(layers, config, total, seed)
    finetune(model, _finetune_config(config, config.epochs), data=data, teacher=teacher, on_step=pruner, seed=seed)
    if pruner.sparsity < config.sparsity:  # fewer steps than planned (e.g. early stop): reach the target
        pruner.prune_to(config.sparsity)
    result = report({n: getattr(m, MASK).bool() for n, m in layers})
    # running statistics lag behind the last pruning steps (momentum averages): re-estimate them
    result["bn_batches"] = recalibrate_batchnorm(model, data, 8)
    add_details(model, result, step=type(config).__name__)
    logger.info("gradual pruning: %.1f%% zero after %d steps", 100 * result["overall"], pruner.step)
    return model
