"""``slimtorch.finetune``: a plain, readable training loop with optional distillation from a teacher."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from slimtorch._log import logger, progress
from slimtorch.config import Config, check_range, register
from slimtorch.data import as_loader, call, first_tensor, split_batch
from slimtorch.errors import DataError
from slimtorch.train.distill import soft_target_kl


@register("finetune", "finetune")
@dataclass(frozen=True, kw_only=True)
class Finetune(Config):
    """Recovery fine-tuning, with distillation from a teacher when one is given.

    Attributes:
        epochs: passes over the training data.
        lr: learning rate of the optimizer.
        optimizer: "adam" (AdamW) or "sgd" (momentum 0.9).
        weight_decay: decoupled weight decay.
        distill: use the teacher (the model as it was before compression, in recipes) when True.
        temperature: softening temperature of the distillation targets.
        alpha: weight of the distillation loss; the task loss gets 1 - alpha.
        max_batches: stop each epoch after this many batches (None: the whole loader).
    """

    epochs: int = 1
    lr: float = 1e-3
    optimizer: Literal["adam", "sgd"] = "adam"
    weight_decay: float = 0.0
    distill: bool = True
    temperature: float = 4.0
    alpha: float = 0.7
    max_batches: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        name = type(self).__name__
        check_range(name, "epochs", self.epochs, 0, integer=True)
        check_range(name, "lr", self.lr, 0, lo_open=True)
        check_range(name, "weight_decay", self.weight_decay, 0)
        check_range(name, "temperature", self.temperature, 0, lo_open=True)
        check_range(name, "alpha", self.alpha, 0, 1)
        if self.max_batches is not None:
            check_range(name, "max_batches", self.max_batches, 1, integer=True)


    def requires_data(self) -> bool:
        """Fine-tuning always needs a labelled training loader."""
        return True


@dataclass
class History:
    """Mean training loss per epoch."""

    losses: list[float]


def _optimizer(model: nn.Module, cfg: Finetune) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise DataError("the model has no trainable parameters to fine-tune")
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def finetune(
    model: nn.Module,
    data: Any,
    *,
    teacher: nn.Module | None = None,
    epochs: int | None = None,
    config: Finetune | None = None,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    on_step: Callable[[nn.Module], None] | None = None,
    seed: int = 0,
) -> nn.Module:
    """Train ``model`` in place on ``data``; with a ``teacher``, mix soft-target distillation into the loss.

    Args:
        model: the model to train (changed in place).
        data: a loader of ``(inputs, labels)`` batches or a zoo data object (its ``train`` loader is used).
        teacher: a frozen reference model (usually the uncompressed original) for distillation.
        epochs: overrides ``config.epochs``.
        config: the :class:`Finetune` settings; defaults when None.
        loss_fn: the task loss on ``(logits, labels)``; cross-entropy by default.
        on_step: called with the model after every optimizer step (pruning masks, schedules).
        seed: seeds the shuffling and any dropout.

    Returns:
        The same model, trained, in eval mode.

    Example:
        >>> import slimtorch as st, torch
        >>> model = torch.nn.Linear(4, 2)
        >>> batches = [(torch.randn(8, 4), torch.randint(0, 2, (8,)))]
        >>> st.finetune(model, batches, epochs=1)
        Linear(in_features=4, out_features=2, bias=True)
    """
    cfg = config or Finetune()
    n_epochs = cfg.epochs if epochs is None else epochs
    loader = as_loader(data, "train")
    loss_fn = loss_fn or F.cross_entropy
    torch.manual_seed(seed)
    if teacher is not None and cfg.distill:
        teacher = teacher.eval()
    else:
        teacher = None
    optimizer = _optimizer(model, cfg)
    history = []
    model.train()
    for epoch in range(n_epochs):
        total, count = 0.0, 0
        for step, batch in enumerate(progress(loader, f"fine-tune epoch {epoch + 1}/{n_epochs}")):
            if cfg.max_batches is not None and step >= cfg.max_batches:
                break
            inputs, target = split_batch(batch)
            if target is None:
                raise DataError("fine-tuning needs labelled batches (inputs, labels)")
            logits = first_tensor(call(model, inputs))
            loss = loss_fn(logits, target)
            if teacher is not None:
                with torch.no_grad():
                    teacher_logits = first_tensor(call(teacher, inputs))
                loss = (1 - cfg.alpha) * loss + cfg.alpha * soft_target_kl(logits, teacher_logits, cfg.temperature)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if on_step is not None:
                on_step(model)
            total += float(loss.detach())
            count += 1
        history.append(total / max(count, 1))
        logger.info("fine-tune epoch %d/%d: loss %.4f", epoch + 1, n_epochs, history[-1])
    model.eval()
    model.__dict__["_slim_history"] = History(history)
    return model


def frozen_copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` in eval mode with gradients off (a teacher for distillation)."""
    teacher = copy.deepcopy(model).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher
