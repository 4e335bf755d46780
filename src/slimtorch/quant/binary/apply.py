"""Binarization and ternarization: the ``Binarize`` and ``Ternarize`` configs, prepare/convert and the handler.

- ``slimtorch.quantize(model, Binarize())`` packs the chosen layers at once (post-training);
  ``QuantAwareTraining(target=Binarize(...))`` (``slimtorch.train.qat``) trains them first through the
  straight-through estimator, distilling from the float model, then packs them.
- :func:`prepare_binary` swaps in training layers (``BinaryQAT*``) for your own training loop and
  :func:`convert_binary` packs them into inference layers (``BinaryLinear`` / ``BinaryConv2d``).

The configs are in :mod:`.config`, the math in :mod:`.math` (scales, thresholds, estimators), :mod:`.pack`
(bits) and :mod:`.kernels` (products on packed bits).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from slimtorch._log import logger
from slimtorch.data import call, iter_inputs, run_hooked
from slimtorch.errors import ConfigError
from slimtorch.graph.surgery import replace_layer
from slimtorch.handlers import handler
from slimtorch.layer_kinds import as_plain
from slimtorch.quant.binary.config import Binarize, Ternarize
from slimtorch.quant.binary.qat import BinaryQATConv2d, BinaryQATLinear
from slimtorch.select import select as select_layers
from slimtorch.select import swappable
from slimtorch.summary import StepSummary, record

_QAT = (BinaryQATLinear, BinaryQATConv2d)


def _unsupported(module: nn.Module) -> str | None:
    if isinstance(module, nn.Conv2d):
        if module.groups != 1:
            return f"a grouped convolution (groups={module.groups})"
        if module.padding_mode != "zeros" or isinstance(module.padding, str):
            return f"padding {module.padding!r} / padding_mode {module.padding_mode!r} (numeric zero padding only)"
    return None


def choose_layers(
    model: nn.Module, config: Binarize | Ternarize, include: Sequence[str] | None = None
) -> tuple[list[str], dict[str, str]]:
    """The Linear/Conv2d layers to binarize and, for the others considered, why they stay in float.

    GPT-2's ``Conv1D`` counts as a Linear and TensorFlow-"same" padded convolutions as Conv2d; other
    subclasses with a ``forward`` of their own stay in float (see :mod:`slimtorch.layer_kinds`).

    Returns:
        ``(names, skipped)`` with ``skipped`` mapping a layer name to the reason.
    """
    layers = [n for n, m in select_layers(model, [nn.Linear, nn.Conv2d]) if not isinstance(m, _QAT)]
    ends = {}
    if layers and config.keep_first:
        ends[layers[0]] = "the first layer (keep_first=True)"
    if layers and config.keep_last:
        ends[layers[-1]] = "the last layer (keep_last=True)"
    chosen, skipped = swappable(model, [nn.Linear, nn.Conv2d], include=include, exclude=config.exclude)
    names = []
    for name, module in chosen:
        if isinstance(module, _QAT):
            continue
        reason = ends.get(name) or _unsupported(module)
        if reason:
            skipped[name] = reason
        else:
            names.append(name)
    return names, skipped


def _input_means(model: nn.Module, names: list[str], data: Any, batches: int) -> dict[str, torch.Tensor]:
    """Per-channel mean input of each named layer over calibration batches (the activation thresholds)."""
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}

    def hook(name):
        def fn(module, args):
            x = args[0].detach().float()
            dims = [d for d in range(x.dim()) if d != 1] if x.dim() > 2 else [0]
            sums[name] = sums.get(name, 0) + x.sum(dim=dims)
            counts[name] = counts.get(name, 0) + x.numel() // x.shape[1]
        return fn

    was_training = model.training
    try:
        run_hooked(model.eval(), iter_inputs(data, batches, split="calibration"),
                   pre={model.get_submodule(n): hook(n) for n in names})
    finally:
        model.train(was_training)
    return {n: sums[n] / counts[n] for n in sums}


def refresh_batchnorm(model: nn.Module, data: Any, batches: int) -> int:
    """Re-estimate every BatchNorm's running mean and variance on ``batches`` of ``data`` (in place).

    After binarization the statistics the float model learned no longer match the layers' outputs; fresh
    statistics (a plain average over the batches) recover much of the post-training accuracy.

    Returns:
        The number of BatchNorm layers refreshed (0 when the model has none).
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not norms:
        return 0
    was_training = model.training
    momenta = [m.momentum for m in norms]
    model.eval()
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the calibration batches
        m.train()
    try:
        with torch.no_grad():
            for inputs in iter_inputs(data, batches, split="calibration"):
                call(model, inputs)
    finally:
        for m, momentum in zip(norms, momenta, strict=True):
            m.momentum = momentum
        model.train(was_training)
    return len(norms)


def prepare_binary(
    model: nn.Module, config: Binarize | Ternarize, *, data: Any = None, select: Sequence[str] | None = None
) -> nn.Module:
    """Replace the chosen layers of ``model`` in place by training layers (STE binary/ternary weights).

    Args:
        model: the float model (changed in place).
        config: a :class:`Binarize` or :class:`Ternarize`.
        data: calibration data; with ``Binarize(activations=True)`` it sets each layer's input threshold to the
            per-channel mean input (without data the threshold starts at 0).
        select: include patterns restricting the layers (see ``slimtorch.select``).

    Returns:
        The same model, ready to train (e.g. with ``slimtorch.finetune``), then :func:`convert_binary`.

    Raises:
        ConfigError: no layer can be binarized (each candidate's reason is listed).

    Example:
        >>> import slimtorch as st, torch
        >>> from slimtorch.quant.binary import convert_binary, prepare_binary
        >>> model = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.Linear(32, 32), torch.nn.Linear(32, 2))
        >>> model = prepare_binary(model, st.Binarize())
        >>> type(convert_binary(model)[1]).__name__
        'BinaryLinear'
    """
    names, skipped = choose_layers(model, config, select)
    if not names:
        raise ConfigError(
            f"{type(config).__name__}: no layer to binarize; candidates were kept because {skipped or 'none exist'}"
            "; set keep_first/keep_last=False or widen select"
        )
    mode = config.mode()
    shifts = {}
    if mode["activations"] and data is not None:
        shifts = _input_means(model, names, data, config.calibration_batches)
    for name in names:
        old = model.get_submodule(name)
        plain = as_plain(old)
        cls = BinaryQATLinear if isinstance(plain, nn.Linear) else BinaryQATConv2d
        new = cls.from_float(plain, **mode)
        if name in shifts:
            with torch.no_grad():
                new.input_shift.copy_(shifts[name])
        replace_layer(model, name, new.train(old.training))
    logger.info("%s: %d layers prepared for training", type(config).__name__, len(names))
    record(model, StepSummary(type(config).__name__, tuple(names), skipped))
    return model


def convert_binary(model: nn.Module) -> nn.Module:
    """Pack every training layer of ``model`` (from :func:`prepare_binary`) in place into inference layers.

    Returns:
        The same model with ``BinaryLinear`` / ``BinaryConv2d`` layers holding packed bits.

    Raises:
        ConfigError: the model has no binary training layers (call :func:`prepare_binary` first).
    """
    names = [n for n, m in model.named_modules() if isinstance(m, _QAT)]
    if not names:
        raise ConfigError("convert: the model has no binary training layers; call prepare_binary(model, config) first")
    for name in names:
        replace_layer(model, name, model.get_submodule(name).pack())  # carries same_pad
    return model


@handler(Binarize)
@handler(Ternarize)
def quantize_binary(
    model: nn.Module,
    config: Binarize | Ternarize,
    *,
    data: Any = None,
    example_inputs: Any = None,
    select: Sequence[str] | None = None,
    seed: int = 0,
) -> nn.Module:
    """Handler of ``slimtorch.quantize`` for :class:`Binarize` and :class:`Ternarize`: prepare, then pack at once
    (post-training). With data, the BatchNorm statistics are re-estimated on ``calibration_batches`` afterwards.

    Raises:
        ConfigError: no layer can be binarized.
    """
    prepare_binary(model, config, data=data, select=select)
    convert_binary(model.eval())
    if data is not None:
        count = refresh_batchnorm(model, data, config.calibration_batches)
        logger.info("%s: refreshed the statistics of %d BatchNorm layers", type(config).__name__, count)
    return model
