"""Cross-layer equalization (Nagel et al. 2019, "Data-Free Quantization Through Weight Equalization and Bias
Correction"): rescale the channels between two consecutive layers so that both get the same weight range per
channel, before per-channel int8 quantization of the weights and per-tensor quantization of the activation
between them.

For a producer ``y = W1 x + b1`` whose output channel ``i`` feeds only a consumer ``W2`` (through operations that
commute with a positive per-channel scale: ReLU, LeakyReLU, max/avg pooling, dropout), dividing row ``i`` of
``W1`` and ``b1`` by ``s_i`` and multiplying column ``i`` of ``W2`` by ``s_i`` leaves the float model's output
unchanged. ``s_i = sqrt(r1_i / r2_i)`` (``r1``: max |W1| of the row, ``r2``: max |W2| of the column) makes both
ranges ``sqrt(r1_i r2_i)``: the activation between them no longer carries channels 100x larger than others, and
a depthwise convolution's per-channel ranges no longer spread over orders of magnitude.

``Hardtanh(0, v)`` between them (``ReLU6``) is not scale-equivariant; it becomes a :class:`ChannelClamp` with
per-channel upper bound ``v / s_i``, which computes exactly what the scaled network needs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from slimtorch.io.manifest import register_module

#: traced operations a positive per-channel scale passes through unchanged (``op(x / s) = op(x) / s``)
_EQUIVARIANT = {"relu", "leaky_relu", "max_pool2d", "max_pool1d", "avg_pool2d", "adaptive_avg_pool2d",
                "adaptive_max_pool2d", "dropout", "contiguous", "clone"}


#: a weight range below this is a dead channel (float32 denormals start at 1.2e-38)
DEAD = 1e-20


def equalization_scales(r1: torch.Tensor, r2: torch.Tensor) -> torch.Tensor:
    """Per-channel scales ``s = sqrt(r1 / r2)`` that give both layers the range ``sqrt(r1 r2)``; 1 where either
    range is below :data:`DEAD` (a dead channel: nothing to balance, and its scale would leave float range).

    Args:
        r1: ``[C]`` max |weight| of each producer output channel (its row, bias excluded).
        r2: ``[C]`` max |weight| of each consumer input channel (its column).

    Returns:
        ``[C]`` float32 positive scales.
    """
    r1, r2 = r1.float(), r2.float()
    s = torch.sqrt(r1 / r2)
    return torch.where((r1 > DEAD) & (r2 > DEAD) & torch.isfinite(s), s, torch.ones_like(s))


def _input_columns(layer: nn.Module) -> torch.Tensor:
    """The absolute weights that read each input channel of a Linear or Conv2d, one row per input channel.

    Returns:
        ``[C_in, n]`` (a grouped convolution's input channel is read by its own group's outputs only).
    """
    w = layer.weight.detach()
    if isinstance(layer, nn.Linear):
        return w.abs().t()
    groups, cin_g = layer.groups, w.shape[1]
    per_group = w.shape[0] // groups
    # [groups, out/groups, cin/groups, k...] -> [groups, cin/groups, out/groups * k...] -> [C_in, n]
    w = w.reshape(groups, per_group, cin_g, -1).transpose(1, 2)
    return w.reshape(groups * cin_g, -1).abs()


def _scale_inputs(layer: nn.Module, s: torch.Tensor) -> None:
    """Multiply the weights reading input channel ``i`` by ``s[i]`` in place."""
    w = layer.weight.data
    if isinstance(layer, nn.Linear):
        w.mul_(s.to(w.dtype).unsqueeze(0))
        return
    groups, cin_g = layer.groups, w.shape[1]
    view = w.view(groups, w.shape[0] // groups, cin_g, -1)
    view.mul_(s.to(w.dtype).view(groups, 1, cin_g, 1))


def _scale_outputs(layer: nn.Module, s: torch.Tensor) -> None:
    """Divide output channel ``i`` (weight row and bias) by ``s[i]`` in place."""
    shape = (-1,) + (1,) * (layer.weight.dim() - 1)
    layer.weight.data.div_(s.to(layer.weight.dtype).view(shape))
    if layer.bias is not None:
        layer.bias.data.div_(s.to(layer.bias.dtype))


@register_module
class ChannelClamp(nn.Module):
    """``min(max(x, 0), upper[c])`` per channel: a ``ReLU6`` (``Hardtanh(0, v)``) after equalization, with its
    upper bound divided by each channel's scale.

    Args:
        channels: number of channels.
        channel_dim: the channel dimension of the inputs (1 for ``[N, C, ...]``, -1 for ``[..., C]``).
    """

    def __init__(self, channels: int, channel_dim: int = 1) -> None:
        super().__init__()
        self.channels, self.channel_dim = channels, channel_dim
        self.register_buffer("upper", torch.full((channels,), 6.0))

    def manifest_args(self) -> dict:
        return {"channels": self.channels, "channel_dim": self.channel_dim}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dim = self.channel_dim % x.dim()
        shape = [1] * x.dim()
        shape[dim] = self.channels
        return torch.minimum(torch.relu(x), self.upper.to(x.dtype).view(shape))


@dataclass
class Pair:
    """Two layers to equalize: ``producer``'s output channels are ``consumer``'s input channels; ``clamps``
    names the ``Hardtanh(0, v)`` modules between them (they become :class:`ChannelClamp`)."""

    producer: str
    consumer: str
    clamps: tuple[str, ...] = ()


def _plain(module: nn.Module) -> bool:
    return type(module) in (nn.Linear, nn.Conv2d) and getattr(module, "padding_mode", "zeros") == "zeros"


def find_pairs(model: nn.Module, example_inputs: Any) -> list[Pair]:
    """The consecutive layer pairs of ``model`` that equalization may rescale, from one traced forward.

    A pair is a plain ``nn.Conv2d``/``nn.Linear`` whose output is read only by a chain of scale-equivariant
    operations (:data:`_EQUIVARIANT`) or ``Hardtanh(0, v)``/``ReLU6`` modules, ending in one plain
    ``nn.Conv2d``/``nn.Linear`` reading it as its input, with as many input channels as the producer has outputs.
    Residual adds, concatenations, reshapes and layers called more than once end a chain.

    Returns:
        The pairs in execution order.
    """
    from slimtorch.graph.trace import trace

    tr = trace(model, example_inputs)
    readers, calls = tr.readers(), tr.module_calls()

    def clamp_module(step: Any) -> bool:
        if step.name != "hardtanh" or not step.module or calls.get(step.module) != 1:
            return False
        act = model.get_submodule(step.module)
        return isinstance(act, nn.Hardtanh) and act.min_val == 0 and act.max_val > 0

    pairs = []
    for index, op in enumerate(tr.ops):
        if op.name not in {"conv2d", "linear"} or not op.module or calls[op.module] != 1:
            continue
        producer = model.get_submodule(op.module)
        if not _plain(producer):
            continue
        tensor, position, clamps = op.outputs[0], index, []
        while tensor not in tr.outputs:
            later = [i for i in readers.get(tensor, []) if i > position]
            if not later:
                break
            step = tr.ops[later[0]]
            passes = step.name in _EQUIVARIANT and step.refs()[0] == tensor
            clamp = clamp_module(step)
            if step.outputs == [tensor]:  # in place (relu_, ReLU6(inplace=True)) or its input back (dropout)
                if not (passes or clamp):  # an in-place op that does not commute with the scale (silu_)
                    break
                clamps += [step.module] if clamp else []
                position = later[0]  # later readers of the same tensor read this op's result
                continue
            if len(later) > 1:  # read elsewhere too: a residual branch, a second consumer
                break
            if passes or clamp:
                clamps += [step.module] if clamp else []
                tensor, position = step.outputs[0], later[0]
                continue
            if step.name in {"conv2d", "linear"} and step.module and calls.get(step.module) == 1 \
                    and step.refs()[0] == tensor:
                consumer = model.get_submodule(step.module)
                channels = producer.weight.shape[0]
                takes = consumer.in_features if isinstance(consumer, nn.Linear) else consumer.in_channels
                if _plain(consumer) and takes == channels and isinstance(consumer, type(producer)):
                    pairs.append(Pair(op.module, step.module, tuple(clamps)))
            break
    return pairs


def equalize(model: nn.Module, example_inputs: Any, *, rounds: int = 20, tolerance: float = 1e-3) -> list[Pair]:
    """Equalize every pair :func:`find_pairs` finds, in place, repeating over all pairs (a layer in two pairs,
    e.g. the middle of conv -> depthwise -> conv, is balanced against both) until no scale moves by more than
    ``tolerance`` or ``rounds`` passes. The float model's outputs do not change (up to float rounding).

    Args:
        model: the model, BatchNorm already folded (a BatchNorm between two layers ends a chain).
        example_inputs: inputs for one traced forward.
        rounds: at most this many passes over the pairs.
        tolerance: stop when every scale of a pass is within this of 1.

    Returns:
        The pairs equalized.
    """
    pairs = find_pairs(model, example_inputs)
    for pair in pairs:  # clamps become per-channel once, their bounds follow the scales below
        for name in pair.clamps:
            act = model.get_submodule(name)
            producer = model.get_submodule(pair.producer)
            clamp = ChannelClamp(producer.weight.shape[0], 1 if isinstance(producer, nn.Conv2d) else -1)
            clamp.upper.fill_(float(act.max_val))
            model.set_submodule(name, clamp)
    for _ in range(rounds):
        moved = 0.0
        for pair in pairs:
            producer, consumer = model.get_submodule(pair.producer), model.get_submodule(pair.consumer)
            r1 = producer.weight.detach().abs().flatten(1).amax(1)
            r2 = _input_columns(consumer).amax(1)
            s = equalization_scales(r1, r2)
            _scale_outputs(producer, s)
            _scale_inputs(consumer, s)
            for name in pair.clamps:
                model.get_submodule(name).upper.div_(s)
            moved = max(moved, float((s - 1).abs().max()))
        if moved <= tolerance:
            break
    return pairs
