"""The verbs. Each applies its config through the handler its family registered (``slimtorch.handlers``).

Every verb changes the model it is given in place and returns it (as ``nn.Module.to`` does); deep-copy the
model first to keep the original. Before a verb changes anything, lazy modules get their shapes from one forward on
``example_inputs`` and a model holding NaN or Inf weights is refused with ``DataError`` (``slimtorch.preflight``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from slimtorch.config import Config
from slimtorch.errors import ConfigError
from slimtorch.handlers import apply
from slimtorch.train.finetune import Finetune


def prune(
    model: nn.Module,
    config: Config,
    *,
    data: Any = None,
    example_inputs: Any = None,
    select: Sequence[str] | None = None,
    seed: int = 0,
) -> nn.Module:
    """Prune ``model`` in place with a pruning config; returns the model.

    Args:
        model: the model to prune (changed in place).
        config: ``UnstructuredPruning``, ``NMPruning``, ``StructuredPruning``, ``LayerPruning``, ...
        data: calibration data (a loader or zoo data) for data-driven importance.
        example_inputs: inputs for a real forward pass (structured pruning traces the graph with them).
        select: include patterns restricting which layers are touched (see ``slimtorch.select``).
        seed: seed for every random choice.

    Returns:
        The same model object, pruned.
    """
    return apply("prune", model, config, data=data, example_inputs=example_inputs, select=select, seed=seed)


def decompose(
    model: nn.Module,
    config: Config,
    *,
    data: Any = None,
    example_inputs: Any = None,
    select: Sequence[str] | None = None,
    seed: int = 0,
) -> nn.Module:
    """Replace layers of ``model`` in place by low-rank factorizations; returns the model."""
    return apply("decompose", model, config, data=data, example_inputs=example_inputs, select=select, seed=seed)


def quantize(
    model: nn.Module,
    config: Config,
    *,
    data: Any = None,
    example_inputs: Any = None,
    select: Sequence[str] | None = None,
    overrides: Mapping[str, Config | None] | None = None,
    seed: int = 0,
) -> nn.Module:
    """Quantize ``model`` in place with a quantization config; returns the model.

    Args:
        model: the model to quantize (changed in place).
        config: ``StaticQuant``, ``DynamicQuant``, ``WeightOnlyQuant``, ``Binarize``, ``Ternarize``.
        data: calibration data (static activations, binary statistics).
        example_inputs: inputs for a real forward pass (BatchNorm folding traces the graph with them).
        select: include patterns restricting which layers are touched (see ``slimtorch.select``).
        overrides: mixed precision, ``{pattern: config or None}``: the layers a pattern matches (layer names,
            globs, ``re:`` regexes or type names, as in ``slimtorch.select``) get that config instead of
            ``config``, or stay float for ``None``. Overrides apply first, in order; ``config`` takes the rest.
        seed: seed for every random choice.

    Returns:
        The same model object, quantized.

    Raises:
        ConfigError: an override config sets ``include`` (its layers come from its pattern).

    Example:
        >>> import slimtorch as st, torch
        >>> model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 4))
        >>> q = st.quantize(model, st.DynamicQuant(), overrides={"2": None})  # the head stays float
        >>> type(q[0]).__name__, type(q[2]).__name__
        ('DynamicQuantLinear', 'Linear')
    """
    common = {"data": data, "example_inputs": example_inputs, "seed": seed}
    if not overrides:
        return apply("quantize", model, config, select=select, **common)
    # every override is checked before the first one changes the model
    if not hasattr(config, "exclude"):
        raise ConfigError(f"{type(config).__name__} has no exclude field, so it cannot take overrides")
    for pattern, cfg in overrides.items():
        if cfg is not None and (not isinstance(cfg, Config) or cfg.stage != "quantize"):
            raise ConfigError(f"overrides[{pattern!r}] must be a quantization config or None, got {cfg!r}")
        if getattr(cfg, "include", None) is not None:
            raise ConfigError(f"overrides[{pattern!r}]: {type(cfg).__name__}.include must be unset; the pattern "
                              "picks the layers")
    rest = dataclasses.replace(config, exclude=tuple(config.exclude) + tuple(overrides))
    for pattern, cfg in overrides.items():
        if cfg is not None:
            apply("quantize", model, cfg, select=[pattern], **common)
    return apply("quantize", model, rest, select=select, **common)


def finetune(
    model: nn.Module,
    data: Any = None,
    *,
    config: Finetune | None = None,
    teacher: nn.Module | None = None,
    epochs: int | None = None,
    eval_fn: Callable[[nn.Module], float] | None = None,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    on_step: Callable[[nn.Module], None] | None = None,
    seed: int = 0,
) -> nn.Module:
    """Fine-tune ``model`` in place on labelled ``data`` (recovery after compression), distilling from ``teacher``
    when one is given; pruning masks hold throughout. Returns the model, in eval mode.

    The data comes second because it is the one thing fine-tuning cannot do without (the settings have defaults);
    a ``Finetune`` config passed there, in the other verbs' place, is taken as ``config``.

    Args:
        model: the model to train (changed in place).
        data: a loader of ``(inputs, labels)`` batches, a list of them or a zoo data object.
        config: the :class:`~slimtorch.train.finetune.Finetune` settings (defaults when None).
        teacher: a frozen reference model (usually the uncompressed original) for distillation.
        epochs: overrides ``config.epochs``.
        eval_fn: validation metric ``eval_fn(model) -> float`` (higher is better) after every epoch; early
            stopping (``config.patience``) keeps the best epoch's weights.
        loss_fn: the task loss on ``(logits, labels)``; cross-entropy by default.
        on_step: called with the model after every optimizer step (a regularizer, a pruning schedule).
        seed: seeds the shuffling and any dropout.

    Returns:
        The same model, trained; ``model._slim_history`` holds the per-epoch losses and metrics.

    Raises:
        DataError: no data, or unlabelled batches.
        ConfigError: two configs, early stopping without a metric, feature matching without a teacher.

    Example:
        >>> import slimtorch as st, torch
        >>> model = torch.nn.Linear(4, 2)
        >>> st.finetune(model, data=[(torch.randn(8, 4), torch.randint(0, 2, (8,)))], epochs=1)
        Linear(in_features=4, out_features=2, bias=True)
    """
    if isinstance(data, Config):  # finetune(model, Finetune(...), data=...), the shape of the other verbs
        if config is not None:
            raise ConfigError("finetune got two configs: pass one, as config= (the data goes in data=)")
        config, data = data, None
    cfg = config if config is not None else Finetune()
    if epochs is not None:
        cfg = dataclasses.replace(cfg, epochs=epochs)
    return apply("finetune", model, cfg, data=data, teacher=teacher, eval_fn=eval_fn, loss_fn=loss_fn,
                 on_step=on_step, seed=seed)


def compress(
    model: nn.Module,
    recipe: Any,
    *,
    data: Any = None,
    example_inputs: Any = None,
    eval_fn: Callable[[nn.Module], float] | None = None,
    out_dir: Any = None,
    resume: bool = False,
    seed: int = 0,
) -> nn.Module:
    """Run a recipe (prune, decompose, quantize and fine-tune stages, in order) on ``model`` in place.

    Every stage is validated before any work; fine-tuning stages distill from the model as it was at the
    start. With ``out_dir``, a checkpoint is written atomically after every stage (``resume=True`` continues
    after the last one), and at the end the files the recipe's ``export`` lists (``model.safetensors``,
    ``model.onnx``) and the report (``report.json``, ``report.md``, ``report.html``, plots): the same files as
    ``slimtorch compress``. The run's record (metrics before, after and per stage; the files written) is kept
    on the model as ``model.slimtorch_record`` (a :class:`slimtorch.record.RunRecord`).

    Args:
        model: the model (changed in place).
        recipe: a ``Recipe``, a dict with the YAML's keys (``{"stages": [{"prune": {...}}], ...}``), a list of
            configs, one config, a YAML path or ``"builtin:NAME"``; all are validated alike.
        data: the data object or loader the stages need (fine-tuning, calibration).
        example_inputs: inputs for tracing and measuring; the first batch of ``data`` when None.
        eval_fn: ``eval_fn(model) -> accuracy`` recorded in the metrics.
        out_dir: the output folder (checkpoints, model, exports, report); None: nothing is written.
        resume: continue from the last checkpoint in ``out_dir``.
        seed: seed for every random step.

    Returns:
        The same model, compressed.

    Example:
        >>> import slimtorch as st, torch
        >>> model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 4))
        >>> st.compress(model, [st.UnstructuredPruning(sparsity=0.5)], example_inputs=torch.randn(2, 64))
        Sequential(...)

    Raises:
        ConfigError: an invalid recipe (a misspelt key names the close match), before any work.
    """
    from slimtorch.pipeline import compress as run
    from slimtorch.recipe import as_recipe

    model.__dict__["slimtorch_record"] = run(model, as_recipe(recipe), data=data, example_inputs=example_inputs,
                                             eval_fn=eval_fn, out_dir=out_dir, resume=resume, seed=seed)
    return model
