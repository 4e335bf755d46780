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
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from slimtorch._log import logger
from slimtorch.config import Config, check_range, register
from slimtorch.data import as_loader
from slimtorch.errors import ConfigError, DataError
from slimtorch.handlers import handler
from slimtorch.prune import importance as imp
from slimtorch.prune.channel_scores import recalibrate_batchnorm
from slimtorch.prune.masks import MASK, attach_mask
from slimtorch.prune.unstructured import UnstructuredPruning, apply_unstructured, choose_layers, plan_masks, report
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


@dataclass(frozen=True, kw_only=True)
class _Scheduled(Config):
    """Fields shared by the schedules (see the subclasses)."""

    sparsity: float = 0.9
    importance: Literal["l1", "l2", "random", "taylor", "movement"] = "l1"
    scope: Literal["global", "layer"] = "global"
    include: tuple[str, ...] | None = None
    exclude: tuple[str, ...] = ()
    prune_head: bool = False
    lr: float = 1e-3
    distill: bool = True
    max_batches: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        name = type(self).__name__
        check_range(name, "sparsity", self.sparsity, 0, 1, hi_open=True)
        check_range(name, "lr", self.lr, 0, lo_open=True)
        if self.max_batches is not None:
            check_range(name, "max_batches", self.max_batches, 1, integer=True)

    def requires_data(self) -> bool:
        """Schedules fine-tune, so they need labelled training data."""
        return True

    def pruning(self, sparsity: float) -> UnstructuredPruning:
        """The one-shot config of one pruning step at ``sparsity``."""
        return UnstructuredPruning(sparsity=sparsity, importance=self.importance, scope=self.scope,
                                   include=self.include, exclude=self.exclude, prune_head=self.prune_head)


@register("prune", "iterative")
@dataclass(frozen=True, kw_only=True)
class IterativePruning(_Scheduled):
    """Prune a fraction, fine-tune, repeat, until ``sparsity`` is reached.

    Attributes:
        sparsity: final fraction (0-1) of zero weights.
        rounds: number of prune + fine-tune rounds.
        epochs_per_round: fine-tuning epochs after each pruning step.
        importance, scope, include, exclude, prune_head: as in ``UnstructuredPruning``.
        lr: fine-tuning learning rate.
        distill: distill from the model as it was before pruning.
        max_batches: cap on batches per fine-tuning epoch.
    """

    rounds: int = 3
    epochs_per_round: int = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        check_range(type(self).__name__, "rounds", self.rounds, 1, integer=True)
        check_range(type(self).__name__, "epochs_per_round", self.epochs_per_round, 0, integer=True)


@register("prune", "gradual")
@dataclass(frozen=True, kw_only=True)
class GradualPruning(_Scheduled):
    """Gradual pruning during fine-tuning along the cubic schedule of Zhu and Gupta (2017).

    Attributes:
        sparsity: final fraction (0-1) of zero weights.
        initial_sparsity: sparsity at the first pruning step.
        epochs: fine-tuning epochs in all (pruning happens in the first ``end_fraction`` of them).
        frequency: prune every this many optimizer steps.
        end_fraction: share (0-1] of the training steps over which the sparsity ramps up.
        importance: "l1"/"l2" magnitude of the current weights, "movement" (-w * dL/dw accumulated over the
            fine-tuning steps), "random" or "taylor" (|w * g| of the latest step).
        scope, include, exclude, prune_head: as in ``UnstructuredPruning``.
        lr, distill, max_batches: fine-tuning settings.
    """

    initial_sparsity: float = 0.0
    epochs: int = 3
    frequency: int = 10
    end_fraction: float = 0.75

    def __post_init__(self) -> None:
        super().__post_init__()
        name = type(self).__name__
        check_range(name, "initial_sparsity", self.initial_sparsity, 0, self.sparsity)
        check_range(name, "epochs", self.epochs, 1, integer=True)
        check_range(name, "frequency", self.frequency, 1, integer=True)
        check_range(name, "end_fraction", self.end_fraction, 0, 1, lo_open=True)


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
    model.__dict__["slimtorch_pruning"] = result
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
    model.__dict__["slimtorch_pruning"] = result
    logger.info("gradual pruning: %.1f%% zero after %d steps", 100 * result["overall"], pruner.step)
    return model
