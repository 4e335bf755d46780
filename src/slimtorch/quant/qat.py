"""Quantization-aware training: ``prepare_qat`` swaps in fake-quant training layers, ``convert`` makes them integer.

Each config type registers a ``(prepare, convert, layer types)`` entry with :func:`register_qat`;
``prepare_qat(model, config)`` looks the config up, and ``convert(model)`` runs the convert function of every
entry whose training layers are in the model. The integer layers ``convert`` produces are the same classes,
in the same format, as post-training quantization gives (``quant/ptq.py``), with the learned scales.

BatchNorm: ``prepare_qat`` with :class:`StaticQuant` folds BatchNorm into the convolutions first, with the
statistics frozen, so that training sees exactly the folded weights the integer model will use.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from slimtorch._log import logger
from slimtorch.config import Config
from slimtorch.errors import ConfigError
from slimtorch.graph.surgery import replace_layer
from slimtorch.layer_kinds import as_plain
from slimtorch.quant import kernels
from slimtorch.quant.config import DynamicQuant, StaticQuant, WeightOnlyQuant
from slimtorch.quant.fake import FakeQuantConv2d, FakeQuantLinear
from slimtorch.quant.formats import FORMATS, QuantConv2d
from slimtorch.quant.packing import pack_int4
from slimtorch.quant.ptq import chosen_layers, fuse_relus, static_layers
from slimtorch.quant.qparams import choose_qparams, quantize
from slimtorch.summary import StepSummary, record


@dataclass(frozen=True)
class QATEntry:
    """How one config family trains and converts: ``prepare(model, config, data=, select=) -> model``,
    ``convert(model) -> model`` and the training layer classes ``convert`` looks for."""

    prepare: Callable[..., nn.Module]
    convert: Callable[[nn.Module], nn.Module]
    layer_types: tuple[type[nn.Module], ...]


#: config class -> its QAT entry
QAT: dict[type[Config], QATEntry] = {}


def register_qat(config_cls: type[Config], prepare: Callable[..., nn.Module],
                 convert: Callable[[nn.Module], nn.Module], layer_types: Sequence[type[nn.Module]]) -> None:
    """Register how ``config_cls`` is prepared for training and converted (binary and other families use this)."""
    QAT[config_cls] = QATEntry(prepare, convert, tuple(layer_types))


def prepare_qat(model: nn.Module, config: Config, *, data: Any = None, select: Sequence[str] | None = None
                ) -> nn.Module:
    """Swap the chosen layers of ``model`` (in place) for fake-quant training layers; train, then :func:`convert`.

    Args:
        model: the float model.
        config: a quantization config with a registered QAT entry (StaticQuant, DynamicQuant, WeightOnlyQuant,
            Binarize, Ternarize).
        data: optional batches; StaticQuant uses the first one to trace the model (BatchNorm folding, ReLU fusion).
        select: include patterns restricting the layers.

    Returns:
        ``model``, ready to train (for example with ``st.finetune``).

    Raises:
        ConfigError: the config has no QAT support.
    """
    entry = QAT.get(type(config))
    if entry is None:
        allowed = sorted(c.__name__ for c in QAT)
        raise ConfigError(f"prepare_qat: {type(config).__name__} has no QAT support; use one of {allowed}")
    return entry.prepare(model, config, data=data, select=select)


def convert(model: nn.Module) -> nn.Module:
    """Turn every training layer left by :func:`prepare_qat` into its integer layer, in place; eval mode.

    Raises:
        ConfigError: the model has no training layers (call ``prepare_qat`` first).
    """
    found = [e for e in QAT.values() if any(isinstance(m, e.layer_types) for m in model.modules())]
    if not found:
        raise ConfigError("convert: the model has no quantization training layers; call st.prepare_qat first")
    for entry in dict.fromkeys(found):
        entry.convert(model)
    return model.eval()


def _prepare_static(model: nn.Module, config: StaticQuant, *, data: Any = None, select=None) -> nn.Module:
    from slimtorch.data import iter_inputs
    from slimtorch.graph.surgery import fold_batchnorms

    example = next(iter(iter_inputs(data, 1)), None) if data is not None else None
    if config.fold_bn and example is not None:
        model.eval()
        fold_batchnorms(model, example)
    chosen, skipped = static_layers(model, config, select)
    fused = fuse_relus(model, example, {n for n, _ in chosen}) if config.fuse_relu and example is not None else set()
    for name, layer in chosen:
        plain = as_plain(layer)
        act_bits = kernels.activation_bits()  # what this CPU's int8 kernels multiply exactly
        fq = (FakeQuantConv2d(plain, bits=config.bits, act_bits=act_bits) if isinstance(plain, nn.Conv2d)
              else FakeQuantLinear(plain, bits=config.bits, act_bits=act_bits, mode="static"))
        fq.fused_relu = name in fused
        replace_layer(model, name, fq)
        if fq.fused_relu:
            model.set_submodule(name, _with_relu(fq))
    logger.info("prepare_qat(StaticQuant): %d layers", len(chosen))
    record(model, StepSummary("StaticQuant", tuple(n for n, _ in chosen), skipped))
    return model.train()


class _ReluAfter(nn.Sequential):
    """A training layer followed by the ReLU its integer kernel will fuse."""


def _with_relu(layer: nn.Module) -> nn.Module:
    return _ReluAfter(layer, nn.ReLU())


def _prepare_linear(model: nn.Module, config: Config, *, data: Any = None, select=None) -> nn.Module:
    mode = "dynamic" if isinstance(config, DynamicQuant) else "weight_only"
    group = getattr(config, "group_size", None)
    chosen, skipped = chosen_layers(model, config, [nn.Linear], select)
    for name, layer in chosen:
        replace_layer(model, name, FakeQuantLinear(as_plain(layer), bits=config.bits, group_size=group, mode=mode))
    logger.info("prepare_qat(%s): %d Linear layers", type(config).__name__, len(chosen))
    record(model, StepSummary(type(config).__name__, tuple(n for n, _ in chosen), skipped))
    return model.train()


def _integer(fq: nn.Module) -> nn.Module:
    """The integer layer of a trained fake-quant layer, with its learned weight scale."""
    w = fq.weight.detach().float()
    scale = fq.weight_scale.detach().float().abs().clamp(min=1e-12)
    zero = torch.zeros_like(scale, dtype=torch.int32)
    group = fq.group_size
    q = quantize(w, scale, zero, bits=fq.bits, signed=True, axis=0, group_size=group)
    relu = getattr(fq, "fused_relu", False)
    if isinstance(fq, FakeQuantConv2d):
        out = QuantConv2d(fq.in_channels, fq.out_channels, list(fq.kernel_size), list(fq.stride), list(fq.padding),
                          list(fq.dilation), fq.groups, fq.bias is not None, bits=fq.bits, relu=relu)
    else:
        fused = {"relu": True} if relu else {}  # only static layers fuse a ReLU (and take the argument)
        out = FORMATS[fq.mode](fq.in_features, fq.out_features, fq.bias is not None, bits=fq.bits,
                               group_size=group or 0, **fused)
    out.qweight = pack_int4(q) if out.qweight.dtype == torch.uint8 else q
    out.weight_scale, out.weight_zero_point = scale, zero
    if fq.bias is not None:
        out.bias = fq.bias.detach().float().clone()
    if fq.act_bits:
        out.set_input_grid(*choose_qparams(fq.act_min, fq.act_max, bits=fq.act_bits, symmetric=False, signed=False),
                           fq.act_bits)
    return out.to(w.device)


def _convert_int(model: nn.Module) -> nn.Module:
    for name, m in list(model.named_modules()):
        if isinstance(m, _ReluAfter):
            model.set_submodule(name, m[0])  # its integer layer applies the ReLU (fused_relu)
    for name, m in list(model.named_modules()):
        if isinstance(m, FakeQuantLinear | FakeQuantConv2d):
            replace_layer(model, name, _integer(m))  # carries same_pad
    return model


def _register_builtin() -> None:
    for cfg, prepare in ((StaticQuant, _prepare_static), (DynamicQuant, _prepare_linear),
                         (WeightOnlyQuant, _prepare_linear)):
        register_qat(cfg, prepare, _convert_int, (FakeQuantLinear, FakeQuantConv2d))
    from slimtorch.quant.binary import Binarize, Ternarize, convert_binary, prepare_binary
    from slimtorch.quant.binary.qat import BinaryQATConv2d, BinaryQATLinear

    for cfg in (Binarize, Ternarize):
        register_qat(cfg, prepare_binary, convert_binary, (BinaryQATLinear, BinaryQATConv2d))


_register_builtin()
