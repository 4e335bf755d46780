"""Post-training quantization: weights to integers, activation ranges calibrated, layers swapped in place.

``apply_static`` / ``apply_dynamic`` / ``apply_weight_only`` are the handlers of ``st.quantize`` for
:class:`StaticQuant`, :class:`DynamicQuant` and :class:`WeightOnlyQuant`. The arithmetic lives in
``quant.qparams``, the ranges in ``quant.observers``; this module wires hooks and replaces modules.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from slimtorch._log import logger, progress
from slimtorch.config import Config
from slimtorch.data import iter_inputs, run_hooked
from slimtorch.errors import ConfigError, DataError, UnsupportedModelError
from slimtorch.graph.surgery import replace_layer
from slimtorch.handlers import handler
from slimtorch.layer_kinds import as_plain, layer_kind
from slimtorch.quant import kernels
from slimtorch.quant.adaround import capture_inputs, round_layer
from slimtorch.quant.bias_correction import correct_biases
from slimtorch.quant.config import DynamicQuant, StaticQuant, WeightOnlyQuant
from slimtorch.quant.equalize import equalize
from slimtorch.quant.formats import QuantConv2d, linear_class
from slimtorch.quant.lower import lower, unlower
from slimtorch.quant.modules import QuantLinear
from slimtorch.quant.observers import make_observer
from slimtorch.quant.packing import pack_int4
from slimtorch.quant.qparams import choose_qparams, minmax, quantize
from slimtorch.select import select as select_layers
from slimtorch.select import swappable
from slimtorch.summary import StepSummary, record


def quantize_weight(
    weight: torch.Tensor, bits: int = 8, group_size: int | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Symmetric signed quantization of a weight per output channel (dim 0) or per group of input columns.

    Args:
        weight: float weight, ``[out, ...]`` (per channel) or ``[out, in]`` (per group).
        bits: bit width, 2..8.
        group_size: input columns per scale; None: one scale per output channel.

    Returns:
        ``(q, scale, zero_point)``: int8 codes of ``weight``'s shape, float32 scales and int32 zero points (all 0)
        of shape ``[out]`` or ``[out, in // group_size]``.
    """
    w = weight.detach().float()
    lo, hi = minmax(w, axis=0, group_size=group_size)
    scale, zero = choose_qparams(lo, hi, bits=bits, symmetric=True, signed=True)
    return quantize(w, scale, zero, bits=bits, signed=True, axis=0, group_size=group_size), scale, zero


def chosen_layers(model: nn.Module, config: Config, types: list[type], select: Sequence[str] | None
                  ) -> tuple[list[tuple[str, nn.Module]], dict[str, str]]:
    """Layers of ``types`` picked by the config's include/exclude (or the verb's ``select``).

    GPT-2's ``Conv1D`` counts as a Linear and TensorFlow-"same" padded convolutions as Conv2d (their twins are
    built from :func:`slimtorch.layer_kinds.as_plain`); subclasses with a ``forward`` slimtorch does not know,
    and layers whose parent reads their ``.weight`` (``nn.MultiheadAttention.out_proj``), stay float.

    Returns:
        ``(chosen, skipped)``: ``(name, module)`` pairs to quantize, and the layers left float mapped to why.
    """
    include = config.include if config.include is not None else select
    return swappable(model, types, include=include, exclude=config.exclude)


def nothing_chosen(model: nn.Module, config: Config, types: list[type], skipped: dict[str, str]
                   ) -> ConfigError | UnsupportedModelError:
    """The error for a step that found no layer to quantize (the model is left untouched).

    Returns:
        :class:`UnsupportedModelError` when the model has no layer of ``types`` at all, or every one must stay
        float (the reasons listed); :class:`ConfigError` when include/exclude/select removed every candidate.
    """
    kinds = " or ".join(f"nn.{t.__name__}" for t in types)
    step, model_name = type(config).__name__, type(model).__name__
    if not select_layers(model, types):
        hint = "" if nn.Conv2d in types else " — use StaticQuant for convolutions"
        return UnsupportedModelError(f"{model_name} has no {kinds} layer; {step} quantizes only {kinds}{hint}")
    if skipped:
        reasons = "; ".join(f"{n}: {why}" for n, why in list(skipped.items())[:4])
        return UnsupportedModelError(f"{step}: every {kinds} layer of {model_name} it was pointed at must stay "
                                     f"as it is ({reasons}{'; ...' if len(skipped) > 4 else ''})")
    return ConfigError(f"{step}: include/exclude/select left no {kinds} layer to quantize; check them")


def string_padding(layer: nn.Module) -> str | None:
    """Why a static int8 convolution cannot reproduce ``layer``'s padding (a mode or a string), or None."""
    if isinstance(layer, nn.Conv2d) and (layer.padding_mode != "zeros" or isinstance(layer.padding, str)):
        return f"padding {layer.padding!r} / padding_mode {layer.padding_mode!r} (numeric zero padding only)"
    return None


def _bias(m: nn.Module) -> torch.Tensor | None:
    return None if m.bias is None else m.bias.detach().float().clone()


def quant_linear(linear: nn.Linear, *, mode: str, bits: int = 8, group_size: int | None = None,
                 **options: Any) -> QuantLinear:
    """Build the quantized twin of a float ``nn.Linear`` in the format ``mode`` names (the class from
    ``quant.formats.FORMATS``; input ranges of static layers still unset). ``options`` are that class's own
    arguments: ``relu`` (static), ``per_token`` (dynamic)."""
    q, scale, zero = quantize_weight(linear.weight, bits, group_size)
    out = linear_class(mode)(linear.in_features, linear.out_features, linear.bias is not None, bits=bits,
                             group_size=group_size or 0, **options)
    out.qweight = pack_int4(q, signed=True) if out.qweight.dtype == torch.uint8 else q
    out.weight_scale, out.weight_zero_point = scale, zero
    if linear.bias is not None:
        out.bias = _bias(linear)
    return out


def quant_conv2d(conv: nn.Conv2d, *, bits: int = 8, relu: bool = False) -> QuantConv2d:
    """Build the static :class:`QuantConv2d` twin of a float ``nn.Conv2d`` (input range still unset)."""
    q, scale, zero = quantize_weight(conv.weight, bits)
    out = QuantConv2d(conv.in_channels, conv.out_channels, list(conv.kernel_size), list(conv.stride),
                      list(conv.padding), list(conv.dilation), conv.groups, conv.bias is not None, bits=bits,
                      relu=relu)
    out.qweight, out.weight_scale, out.weight_zero_point = q, scale, zero
    if conv.bias is not None:
        out.bias = _bias(conv)
    return out


def fuse_relus(model: nn.Module, example_inputs: Any, names: set[str]) -> set[str]:
    """Find layers in ``names`` whose output goes first into an ``nn.ReLU`` module called once, and only there (or
    the ReLU works in place, so every later reader sees its result); swap that ReLU for ``nn.Identity`` (the
    kernel applies it) and return the fused layer names."""
    from slimtorch.graph.trace import trace

    tr = trace(model, example_inputs)
    readers, calls = tr.readers(), tr.module_calls()
    producer = {op.outputs[0]: op.module for op in tr.ops if op.outputs and op.module in names
                and op.name in {"conv2d", "linear", "addmm"}}
    fused = set()
    for index, op in enumerate(tr.ops):
        if op.name != "relu" or not op.module or not op.refs() or calls.get(op.module) != 1:
            continue
        ref = op.refs()[0]
        src, seen = producer.get(ref), readers.get(ref, [])
        in_place = op.outputs == [ref]  # later readers of the same tensor read the ReLU's result
        first = bool(seen) and seen[0] == index
        if src and first and (len(seen) == 1 or in_place) and isinstance(model.get_submodule(op.module), nn.ReLU):
            model.set_submodule(op.module, nn.Identity())
            fused.add(src)
    return fused


def calibrate(model: nn.Module, names: list[str], data: Any, num_batches: int, observer: str,
              percentile: float = 99.99) -> dict[str, tuple[float, float]]:
    """Run ``num_batches`` of ``data`` through ``model`` and return each named layer's input ``(min, max)``.

    Forward hooks feed each layer's input to an observer (memory bounded by its histogram).

    Raises:
        DataError: the data yields no batch.
    """
    observers = {n: make_observer(observer, percentile) for n in names}
    hooks = {model.get_submodule(n): (lambda _m, args, n=n: observers[n].observe(args[0].detach().float()))
             for n in names}
    batches = progress(iter_inputs(data, num_batches), "calibrating", total=num_batches)
    if not run_hooked(model, batches, pre=hooks):
        raise DataError("calibration data yielded no batch; pass a DataLoader or an iterable of input batches")
    return {n: observers[n].range(kernels.activation_bits(), signed=False) for n in names}


def static_layers(model: nn.Module, config: StaticQuant, select: Sequence[str] | None
                   ) -> tuple[list[tuple[str, nn.Module]], dict[str, str]]:
    """The Linear/Conv2d layers static int8 takes (numeric zero padding only) and the skipped ones."""
    chosen, skipped = chosen_layers(model, config, [nn.Linear, nn.Conv2d], select)
    skipped.update({n: string_padding(m) for n, m in chosen if string_padding(m)})
    return [(n, m) for n, m in chosen if n not in skipped], skipped


@handler(StaticQuant)
def apply_static(model: nn.Module, config: StaticQuant, *, data: Any = None, example_inputs: Any = None,
                 select: Sequence[str] | None = None, seed: int = 0) -> nn.Module:
    """Handler of ``st.quantize`` for :class:`StaticQuant`: fold BatchNorm, equalize (``equalize``), calibrate,
    fuse ReLUs, build the int8 layers (their rounding chosen by AdaRound with ``adaround``), swap them in, and
    correct the biases (``bias_correction``). What the optional steps did is in the step's summary details.

    Raises:
        DataError: no calibration data.
        UnsupportedModelError: the model has no Linear or Conv2d layer at all, or every one must stay float.
        ConfigError: include/exclude/select left no Linear or Conv2d layer to quantize.
    """
    if data is None:
        raise DataError("StaticQuant needs calibration data: st.quantize(model, StaticQuant(), data=loader)")
    model.eval()
    unlower(model)  # quantized again: the graph is lowered anew below
    if example_inputs is None:
        example_inputs = next(iter(iter_inputs(data, 1)), None)
    if config.fold_bn and example_inputs is not None:
        from slimtorch.graph.surgery import fold_batchnorms

        folded = fold_batchnorms(model, example_inputs)
        logger.info("StaticQuant: folded %d BatchNorm layers into their convolutions", len(folded))
    details: dict[str, Any] = {}
    if config.equalize and example_inputs is not None:
        pairs = equalize(model, example_inputs)
        details["equalized"] = [[p.producer, p.consumer] for p in pairs]
        details["absorbed"] = {f"{p.producer}->{p.consumer}": {"channels": p.shifted, "largest_shift": p.largest_shift}
                               for p in pairs if p.shifted}
        logger.info("StaticQuant: equalized %d layer pairs (high biases absorbed in %d)", len(pairs),
                    len(details["absorbed"]))
    chosen, skipped = static_layers(model, config, select)
    if not chosen:
        raise nothing_chosen(model, config, [nn.Linear, nn.Conv2d], skipped)
    names = [n for n, _ in chosen]
    reference = copy.deepcopy(model) if config.bias_correction else None  # the float model, ReLUs unfused
    # calibrated before the ReLUs are fused: a fused ReLU becomes an Identity until its layer is swapped, and the
    # next layer's inputs must be measured after the ReLU (non-negative, every code used), not before it
    ranges = calibrate(model, names, data, config.calibration_batches, config.observer, config.percentile)
    samples = capture_inputs(model, names, data, config.calibration_batches) if config.adaround else {}
    fused = fuse_relus(model, example_inputs, set(names)) if config.fuse_relu and example_inputs is not None else set()
    started = time.perf_counter()
    for k, (name, layer) in enumerate(chosen):
        relu = name in fused
        plain = as_plain(layer)
        q = quant_conv2d(plain, relu=relu) if isinstance(plain, nn.Conv2d) else quant_linear(
            plain, mode="static", relu=relu)
        bits = kernels.activation_bits()
        scale, zero = choose_qparams(torch.tensor(ranges[name][0]), torch.tensor(ranges[name][1]), bits=bits,
                                     symmetric=False, signed=False)
        q.set_input_grid(scale, zero, bits)
        if name in samples and layer_kind(layer).kind != "same_pad":  # a "same" pad is applied inside the twin
            # the time budget is shared evenly; time a layer leaves unused passes to the next ones
            deadline = started + config.adaround_seconds * (k + 1) / len(chosen)
            result = round_layer(q, plain, samples.pop(name), deadline=deadline, seed=seed)
            details.setdefault("adaround", {})[name] = {"loss_nearest": result.loss_nearest, "loss": result.loss,
                                                        "iterations": result.iterations}
        replace_layer(model, name, q)
    if "adaround" in details:
        rounded = details["adaround"].values()
        logger.info("StaticQuant: AdaRound on %d layers, output error %.3g -> %.3g (sum of mean squares)",
                    len(rounded), sum(r["loss_nearest"] for r in rounded), sum(r["loss"] for r in rounded))
    logger.info("StaticQuant: %d layers to int8 (%d with ReLU fused)", len(chosen), len(fused))
    if reference is not None:
        batches = list(iter_inputs(data, config.calibration_batches))
        details["bias_correction"] = correct_biases(model, reference, names, batches)
        logger.info("StaticQuant: bias correction on %d layers (largest shift removed %.3g)",
                    len(details["bias_correction"]), max(details["bias_correction"].values(), default=0.0))
    if config.lower:
        lowering = lower(model, data, min(config.calibration_batches, 8), config.observer, config.percentile)
        details["lowered"] = {"layers": lowering.layers, "chained": lowering.chained, "adds": lowering.adds,
                              "reasons": lowering.reasons}
        logger.info("StaticQuant: %s", lowering.line())
    record(model, StepSummary("StaticQuant", tuple(names), skipped, details=details))
    return model


@handler(DynamicQuant)
def apply_dynamic(model: nn.Module, config: DynamicQuant, *, data: Any = None, example_inputs: Any = None,
                  select: Sequence[str] | None = None, seed: int = 0) -> nn.Module:
    """Handler of ``st.quantize`` for :class:`DynamicQuant`: every chosen Linear (and GPT-2 ``Conv1D``) to int8
    weights, activations quantized per token at run time (no data needed).

    Raises:
        UnsupportedModelError: the model has no nn.Linear at all, or every one must stay float.
        ConfigError: include/exclude/select left no Linear layer to quantize.
    """
    chosen, skipped = chosen_layers(model, config, [nn.Linear], select)
    if not chosen:
        raise nothing_chosen(model, config, [nn.Linear], skipped)
    for name, layer in chosen:
        replace_layer(model, name, quant_linear(as_plain(layer), mode="dynamic",
                                                per_token=config.activations == "token"))
    logger.info("DynamicQuant: %d Linear layers to int8", len(chosen))
    record(model, StepSummary("DynamicQuant", tuple(n for n, _ in chosen), skipped))
    return model


@handler(WeightOnlyQuant)
def apply_weight_only(model: nn.Module, config: WeightOnlyQuant, *, data: Any = None, example_inputs: Any = None,
                      select: Sequence[str] | None = None, seed: int = 0) -> nn.Module:
    """Handler of ``st.quantize`` for :class:`WeightOnlyQuant`: integer weights (int4 packed), float activations.

    Where ``group_size`` does not divide a layer's input width, its last group is shorter.

    Raises:
        UnsupportedModelError: the model has no nn.Linear at all, or every one must stay float.
        ConfigError: include/exclude/select left no Linear layer.
    """
    chosen, skipped = chosen_layers(model, config, [nn.Linear], select)
    if not chosen:
        raise nothing_chosen(model, config, [nn.Linear], skipped)
    for name, layer in chosen:
        replace_layer(model, name, quant_linear(as_plain(layer), mode="weight_only", bits=config.bits,
                                                group_size=config.group_size))
    logger.info("WeightOnlyQuant: %d Linear layers to int%d", len(chosen), config.bits)
    record(model, StepSummary("WeightOnlyQuant", tuple(n for n, _ in chosen), skipped))
    return model
