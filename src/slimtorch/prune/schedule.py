"""The math of the pruning schedules (one-shot is ``UnstructuredPruning`` then ``finetune``):

- :class:`IterativePruning`: ``rounds`` times, prune to the next sparsity of a geometric ramp (each round
  removes the same fraction of the remaining weights) and fine-tune.
- :class:`GradualPruning`: gradual magnitude pruning of Zhu and Gupta (2017, "To prune, or not to prune"):
  during fine-tuning, every ``frequency`` steps the sparsity follows the cubic schedule
  ``s_t = s_f + (s_i - s_f) * (1 - (t - t0) / (t1 - t0))^3`` from ``initial_sparsity`` at step ``t0`` to
  ``sparsity`` at ``t1 = end_fraction * total steps``; the remaining steps fine-tune at the final sparsity.
  It is driven from the fine-tuning loop through its ``on_step`` hook (:class:`GradualPruner`).

Both distill from the model as it was before pruning when ``distill`` is True. Their handlers, which fine-tune, live
a floor up in :mod:`slimtorch.train.prune_schedules`; this module holds the schedules and the ``on_step`` hook.
"""

from __future__ import annotations

import torch
from torch import nn

from slimtorch.prune import importance as imp
from slimtorch.prune.config import GradualPruning
from slimtorch.prune.masks import MASK, attach_mask
from slimtorch.prune.unstructured import plan_masks


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
