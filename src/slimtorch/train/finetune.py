"""``slimtorch.finetune``: a plain, readable training loop for recovery after compression.

Optional extras, all off by default: distillation from a teacher (soft targets at a temperature, mixed with
the task loss, plus hidden-feature matching between named layers), early stopping on a validation metric
(the best weights are restored), an ``on_step`` hook (pruning masks and schedules use it) and, under
``torchrun``, DistributedDataParallel with a distributed sampler (see :mod:`slimtorch.train.distributed`).
Pruning masks hold throughout: pruned weights get no gradient and are re-zeroed after every step.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, RandomSampler

from slimtorch._log import logger, progress
from slimtorch.config import Config, check_range, register
from slimtorch.data import as_loader, call, first_tensor, split_batch
from slimtorch.errors import ConfigError, DataError
from slimtorch.handlers import handler
from slimtorch.preflight import check_finite, lazy_modules, materialize
from slimtorch.prune.masks import apply_masks, restore_masks, sparse_layers
from slimtorch.train import distributed as ddp
from slimtorch.train.distill import FeatureTap, feature_mse, soft_target_kl


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
        feature_layers: names of layers whose outputs the student matches to the teacher's (MSE, normalised
            per layer); the layers must keep their output shape.
        feature_weight: weight of the feature-matching loss (added to the mixed task/distillation loss).
        keep_zeros: layers that are already sparse (at least 10% exact zeros, e.g. a pruned model loaded from
            a file, whose masks are not stored) keep their zeros as masks, so fine-tuning does not undo pruning.
        patience: stop after this many epochs without a better validation metric and restore the best
            weights (None: no early stopping); needs ``eval_fn`` or a data object with ``evaluate``.
    """

    takes_teacher: ClassVar[bool] = True

    epochs: int = 1
    lr: float = 1e-3
    optimizer: Literal["adam", "sgd"] = "adam"
    weight_decay: float = 0.0
    distill: bool = True
    temperature: float = 4.0
    alpha: float = 0.7
    max_batches: int | None = None
    feature_layers: tuple[str, ...] = ()
    feature_weight: float = 1.0
    patience: int | None = None
    keep_zeros: bool = True

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
        check_range(name, "feature_weight", self.feature_weight, 0)
        if self.patience is not None:
            check_range(name, "patience", self.patience, 1, integer=True)

    def requires_data(self) -> bool:
        """Fine-tuning always needs a labelled training loader."""
        return True


@dataclass
class History:
    """What a fine-tuning run did: mean training loss per epoch, the validation metric per epoch (when
    evaluated), the epoch whose weights were kept (1-based) and whether it stopped early."""

    losses: list[float]
    metrics: list[float] = field(default_factory=list)
    best_epoch: int | None = None
    stopped_early: bool = False


def _optimizer(model: nn.Module, cfg: Finetune) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise DataError("the model has no trainable parameters to fine-tune")
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def _to(device: torch.device, value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, dict):
        return {k: _to(device, v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return type(value)(_to(device, v) for v in value)
    return value


def _seeded(loader: Any, seed: int) -> Any:
    """A shuffling DataLoader rebuilt with its own generator seeded by ``seed``, so the same seed gives the
    same batches however often the original loader was iterated before; other loaders are left as they are."""
    if not isinstance(loader, DataLoader) or not isinstance(loader.sampler, RandomSampler) \
            or loader.batch_size is None:
        return loader
    return DataLoader(loader.dataset, batch_size=loader.batch_size, shuffle=True, collate_fn=loader.collate_fn,
                      num_workers=loader.num_workers, drop_last=loader.drop_last,
                      generator=torch.Generator().manual_seed(seed))


class _Loss:
    """The training loss: task loss, mixed with soft-target distillation and feature matching."""

    def __init__(self, model: nn.Module, teacher: nn.Module | None, cfg: Finetune, loss_fn: Callable):
        self.teacher, self.cfg, self.loss_fn = teacher, cfg, loss_fn
        layers = cfg.feature_layers
        if layers and teacher is None:
            raise ConfigError("Finetune.feature_layers needs a teacher: pass teacher= (and keep distill=True)")
        self.student_tap = FeatureTap(model, layers) if layers else None
        self.teacher_tap = FeatureTap(teacher, layers) if layers else None

    def __call__(self, net: nn.Module, inputs: Any, target: torch.Tensor) -> torch.Tensor:
        logits = first_tensor(call(net, inputs))
        loss = self.loss_fn(logits, target)
        if self.teacher is None:
            return loss
        with torch.no_grad():
            teacher_logits = first_tensor(call(self.teacher, inputs))
        cfg = self.cfg
        loss = (1 - cfg.alpha) * loss + cfg.alpha * soft_target_kl(logits, teacher_logits, cfg.temperature)
        if self.student_tap is not None:
            names = self.student_tap.names
            hint = feature_mse(self.student_tap.features(), self.teacher_tap.features(), names)
            loss = loss + cfg.feature_weight * hint
        return loss

    def close(self) -> None:
        for tap in (self.student_tap, self.teacher_tap):
            if tap is not None:
                tap.close()


@handler(Finetune)
def finetune(
    model: nn.Module,
    config: Finetune | None = None,
    *,
    data: Any,
    teacher: nn.Module | None = None,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    on_step: Callable[[nn.Module], None] | None = None,
    eval_fn: Callable[[nn.Module], float] | None = None,
    example_inputs: Any = None,
    select: Any = None,
    seed: int = 0,
) -> nn.Module:
    """Train ``model`` in place on ``data``; with a ``teacher``, mix distillation into the loss. The handler of
    :class:`Finetune` (``st.finetune`` and the recipe stage ``finetune``, whose teacher is the model as the recipe
    found it).

    Under ``torchrun`` (``WORLD_SIZE`` > 1) the same call trains with DistributedDataParallel; every rank
    returns the same trained model, and only rank 0 logs.

    Args:
        model: the model to train (changed in place); pruning masks on it are kept.
        config: the :class:`Finetune` settings; defaults when None.
        data: a loader of ``(inputs, labels)`` batches or a zoo data object (its ``train`` loader is used).
        teacher: a frozen reference model (usually the uncompressed original) for distillation.
        loss_fn: the task loss on ``(logits, labels)``; cross-entropy by default.
        on_step: called with the model after every optimizer step (pruning schedules). If it has a
            ``finished`` attribute, early stopping only keeps weights from epochs where it is True.
        eval_fn: validation metric ``eval_fn(model) -> float``, higher is better, evaluated after every epoch;
            ``data.evaluate`` is used when ``config.patience`` is set and no ``eval_fn`` is given.
        example_inputs: unused (the training batches give lazy layers their shapes); the handlers' signature.
        select: must be None: fine-tuning trains every trainable parameter.
        seed: seeds the shuffling and any dropout.

    Returns:
        The same model, trained, in eval mode; ``model._slim_history`` holds the :class:`History`.

    Raises:
        ConfigError: early stopping without a metric, feature matching without a teacher, or a ``select``.
        DataError: no data, unlabelled batches, no trainable parameters, or a NaN/Inf weight (named).

    Example:
        >>> import slimtorch as st, torch
        >>> model = torch.nn.Linear(4, 2)
        >>> batches = [(torch.randn(8, 4), torch.randint(0, 2, (8,)))]
        >>> st.finetune(model, data=batches, epochs=1)
        Linear(in_features=4, out_features=2, bias=True)
    """
    if select is not None:
        raise ConfigError("fine-tuning trains every trainable parameter: select= is not supported (freeze layers "
                          "with requires_grad_(False) instead)")
    if data is None:
        raise DataError("fine-tuning trains: pass data=<a labelled DataLoader, a list of (inputs, labels) batches or "
                        "a zoo data object>")
    cfg = config or Finetune()
    n_epochs = cfg.epochs
    loader = as_loader(data, "train")
    check_finite(model)
    if lazy_modules(model):  # the first training batch gives lazy layers their shapes before the optimizer sees them
        materialize(model, split_batch(next(iter(loader)))[0])
    if eval_fn is None and cfg.patience is not None:
        eval_fn = getattr(data, "evaluate", None)
        if eval_fn is None:
            raise ConfigError("Finetune.patience needs a validation metric: pass eval_fn=(model -> float)")
    torch.manual_seed(seed)
    teacher = teacher.eval() if teacher is not None and cfg.distill else None
    # (re)install the hooks of pruning masks (e.g. on a deep copy), and mask the zeros of loaded sparse layers
    restore_masks(model, layers=sparse_layers(model) if cfg.keep_zeros else None)
    net = model
    loader = _seeded(loader, seed)
    if ddp.world_size() > 1:
        ddp.init(model)
        loader = ddp.shard(loader, seed)
        net = ddp.wrap(model)
    device = next(model.parameters()).device
    optimizer = _optimizer(model, cfg)
    loss_of = _Loss(model, teacher, cfg, loss_fn or F.cross_entropy)
    history = History([])
    best_metric, best_state, waited = float("-inf"), None, 0
    try:
        for epoch in range(n_epochs):
            ddp.set_epoch(loader, epoch)
            model.train()
            total, count = 0.0, 0
            batches = progress(loader, f"fine-tune epoch {epoch + 1}/{n_epochs}") if ddp.is_main() else loader
            for step, batch in enumerate(batches):
                if cfg.max_batches is not None and step >= cfg.max_batches:
                    break
                inputs, target = split_batch(_to(device, batch))
                if target is None:
                    raise DataError("fine-tuning needs labelled batches (inputs, labels)")
                loss = loss_of(net, inputs, target)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                apply_masks(model)
                if on_step is not None:
                    on_step(model)
                total += float(loss.detach())
                count += 1
            history.losses.append(ddp.mean_over_ranks(total / max(count, 1)))
            message = f"fine-tune epoch {epoch + 1}/{n_epochs}: loss {history.losses[-1]:.4f}"
            if eval_fn is not None:
                model.eval()
                with torch.no_grad():
                    history.metrics.append(float(eval_fn(model)))
                message += f", validation {history.metrics[-1]:.4f}"
                if getattr(on_step, "finished", True) and history.metrics[-1] > best_metric:
                    best_metric, waited, history.best_epoch = history.metrics[-1], 0, epoch + 1
                    best_state = copy.deepcopy(model.state_dict()) if cfg.patience is not None else None
                elif getattr(on_step, "finished", True):
                    waited += 1
            if ddp.is_main():
                logger.info(message)
            if cfg.patience is not None and waited >= cfg.patience:
                history.stopped_early = True
                break
    finally:
        loss_of.close()
    if best_state is not None and history.best_epoch != len(history.losses):
        model.load_state_dict(best_state)
        logger.info("fine-tune: kept the weights of epoch %d (validation %.4f)", history.best_epoch, best_metric)
    model.eval()
    model.__dict__["_slim_history"] = history
    return model


def frozen_copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` in eval mode with gradients off (a teacher for distillation)."""
    teacher = copy.deepcopy(model).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher
