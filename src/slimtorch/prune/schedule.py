"""Pruning schedules: one-shot (``UnstructuredPruning`` then ``finetune``), iterative and gradual.

- :class:`IterativePruning`: ``rounds`` times, prune to the next sparsity of a geometric ramp (each round
  removes the same fraction of the remaining weights) and fine-tune.
- :class:`GradualPruning`: gradual magnitude pruning of Zhu and Gupta (2017, "To prune, or not to prune"):
  during fine-tuning, every ``frequency`` steps the sparsity follows the cubic schedule
  ``s_t = s_f + (s_i - s_f) * (1 - (t - t0) / (t1 - t0))^3`` from ``initial_sparsity`` at step ``t0`` to
  ``sparsity`` at ``t1 = end_fraction * total steps``; the remaining steps fine-tune at the final sparsity.
  It is driven from the fine-tuning loop through its ``on_step`` hook (:class:`GradualPruner`).

Both distill from the model as it was before pruning when ``distill`` is True.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from slimtorch._log import logger
from slimtorch.data import as_loader
from slimtorch.errors import ConfigError, DataError
from slimtorch.handlers import handler
from slimtorch.prune import importance as imp
from slimtorch.prune.channel_scores import recalibrate_batchnorm
from slimtorch.prune.config import GradualPruning, IterativePruning, _Scheduled
from slimtorch.prune.masks import MASK, attach_mask
from slimtorch.prune.unstructured import apply_unstructured, choose_layers, plan_masks, report
from slimtorch.summary import add_details
from slimtorch.train.finetune import Finetune, finetune, frozen_copy


def cubic_sparsity(step: int, *, initial: float, final: float, begin: int, end: int) -> float:
    """Zhu & Gupta's cubic sparsity at ``step``: ``initial`` until ``begin``, ``final`` from ``end`` on."""
    if step <= begin or end <= begin:
        return initial if step <= begin and end > begin else final
    if step >= end:
        return final
    return final + (initial - final) * (1.0 - (step - begin) / (end - begin)) ** 3


def iterative_sparsities(final: float, rounds: int) -> list[float]:
    """Sparsity after each of ``rounds`` rounds, removing the same fraction of the remaining weights each
    round: ``1 - (1 - final)^(k / rounds)``; the last one is ``final``."""
    return [1.0 - (1.0 - final) ** (k / rounds) for k in range(1, rounds + 1)]


class GradualPruner:
    """The ``on_step`` hook of gradual pruning: counts steps and raises the masks along the cubic schedule.

    Args:
        layers: ``(name, module)`` of the layers being pruned (masks already attached).
        config: the schedule.
        total_steps: optimizer steps the fine-tuning will take.
        seed: seed of "random" importance.
    """

    def __init__(self, layers: list[tuple[str, nn.Module]], config: GradualPruning, total_steps: int, seed: int):
        self.layers, self.config, self.seed = layers, config, seed
        self.step = 0
        self.end = max(1, round(config.end_fraction * total_steps))
        self.movement = {n: torch.zeros(m.weight.shape) for n, m in layers} if config.importance == "movement" else {}
        self.sparsity = config.initial_sparsity
        self.finished = False

    def __call__(self, model: nn.Module) -> None:
        self.step += 1
        for name, module in self.layers:
            if name in self.movement and module.weight.grad is not None:
                self.movement[name] += imp.movement_step(module.weight, module.weight.grad).cpu()
        if self.step % self.config.frequency and self.step != self.end:
            return
        cfg = self.config
        target = cubic_sparsity(self.step, initial=cfg.initial_sparsity, final=cfg.sparsity, begin=0, end=self.end)
        if target > self.sparsity:
            self.prune_to(target)
        self.finished = self.step >= self.end

    def prune_to(self, sparsity: float) -> None:
        """Raise every layer's mask to ``sparsity`` (pruned weights stay pruned)."""
        scores = {}
        for i, (name, module) in enumerate(self.layers):
            grad = module.weight.grad if self.config.importance == "taylor" else self.movement.get(name)
            if self.config.importance == "taylor" and grad is None:
                grad = torch.zeros_like(module.weight)
            s = imp.score(self.config.importance, module.weight, grad=grad, seed=self.seed + i).cpu()
            scores[name] = s.masked_fill(~getattr(module, MASK).bool().cpu(), float("-inf"))
        masks = plan_masks(scores, sparsity, self.config.scope)
        for name, module in self.layers:
            attach_mask(module, masks[name])
        self.sparsity = sparsity


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
        finetune(model, data, teacher=teacher, config=_finetune_config(config, config.epochs_per_round),
                 seed=seed + k)
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
    finetune(model, data, teacher=teacher, config=_finetune_config(config, config.epochs), on_step=pruner,
             seed=seed)
    if pruner.sparsity < config.sparsity:  # fewer steps than planned (e.g. early stop): reach the target
        pruner.prune_to(config.sparsity)
    result = report({n: getattr(m, MASK).bool() for n, m in layers})
    # running statistics lag behind the last pruning steps (momentum averages): re-estimate them
    result["bn_batches"] = recalibrate_batchnorm(model, data, 8)
    add_details(model, result, step=type(config).__name__)
    logger.info("gradual pruning: %.1f%% zero after %d steps", 100 * result["overall"], pruner.step)
    return model
