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

High-bias absorption (the paper's section 4.1.2) follows the scaling: a producer channel whose pre-activation
``z_i`` never falls below ``c_i > 0`` widens the activation range by ``c_i`` for nothing. When ``z_i >= c_i >= 0``,
``relu(z_i - c_i) = relu(z_i) - c_i`` (likewise LeakyReLU, identity, and ``min(relu(z), u)`` with the bound
lowered to ``u - c_i``), so ``b1_i -= c_i`` and the consumer's bias absorbs what its weights read of ``c_i``
(``W2[:, i] c_i``; for a convolution summed over the kernel). The paper takes ``c = max(0, beta - 3 gamma)``
from BatchNorm, where ``beta`` and ``gamma`` are the mean and standard deviation of the producer's output on
training data. Here BatchNorm is already folded and its parameters are gone, so the mean and standard deviation
are measured on ``example_inputs`` instead, and the shift is also capped at the observed minimum:
``c_i = max(0, min(mean_i - 3 std_i, min z_i))``, capped at the chain's clamp bounds. The cap makes the shift
exact on those inputs (``beta - 3 gamma`` alone is not exact even on the data it describes); the 3-sigma term
keeps it well below the minimum when the example batch is small (one image's minimum is no bound for the next
image). On other inputs a pre-activation below ``c_i`` is read as ``c_i`` instead of ``max(z_i, 0)``.

Absorption needs every operation between the two layers to commute with a per-channel shift: ReLU, LeakyReLU,
``Hardtanh(0, v)``, max pooling (padded with -inf), adaptive pooling, average pooling without zero padding
counted in the mean, dropout in eval (identity), ``contiguous``/``clone``. The consumer must not pad: a padded
border reads zeros rather than ``c_i``, which no per-channel bias can make up for, so padded convolutions (e.g.
3x3 with ``padding=1``) keep their producer's bias (:attr:`Pair.absorb_blocked` says why). Both layers need a
bias (BatchNorm folding gives one). :attr:`Pair.shifted` and :attr:`Pair.largest_shift` report what moved.
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
    names the ``Hardtanh(0, v)`` modules between them (they become :class:`ChannelClamp`).

    ``absorb_blocked`` says why high-bias absorption cannot run on the pair (None: it can); ``shifted`` (number
    of channels) and ``largest_shift`` (the largest ``c_i``, in the producer's output units after scaling) say
    what :func:`equalize` absorbed."""

    producer: str
    consumer: str
    clamps: tuple[str, ...] = ()
    absorb_blocked: str | None = None
    shifted: int = 0
    largest_shift: float = 0.0


def _plain(module: nn.Module) -> bool:
    return type(module) in (nn.Linear, nn.Conv2d) and getattr(module, "padding_mode", "zeros") == "zeros"


#: traced operations a per-channel shift passes through when the values stay above it (``op(x - c) = op(x) - c``
#: for ``x >= c >= 0``); ``avg_pool2d`` and ``dropout`` are checked further in :func:`_shift_blocker`
_SHIFTABLE = {"relu", "leaky_relu", "hardtanh", "max_pool2d", "max_pool1d", "adaptive_max_pool2d",
              "adaptive_avg_pool2d", "avg_pool2d", "dropout", "contiguous", "clone"}

#: positional parameters of ``avg_pool2d`` after the input
_AVG_POOL_ARGS = ("kernel_size", "stride", "padding", "ceil_mode", "count_include_pad", "divisor_override")


def _pads(conv: nn.Conv2d) -> bool:
    """Whether ``conv`` reads zero padding at its borders."""
    if conv.padding == "valid":
        return False
    if conv.padding == "same":
        return any(k > 1 for k in conv.kernel_size)
    return any(p > 0 for p in conv.padding)


def _shift_blocker(producer: nn.Module, consumer: nn.Module, steps: list[Any]) -> str | None:
    """Why high-bias absorption cannot run between ``producer`` and ``consumer`` through the traced ``steps``
    between them; None when it can."""
    if producer.bias is None or consumer.bias is None:
        return "a layer without bias"
    if isinstance(consumer, nn.Conv2d) and _pads(consumer):
        return "consumer pads with zeros"
    for step in steps:
        if step.name not in _SHIFTABLE:
            return f"{step.name} does not commute with a shift"
        if step.name == "avg_pool2d":
            named = dict(zip(_AVG_POOL_ARGS, step.args[1:], strict=False)) | step.kwargs
            padding = named.get("padding", 0)
            padded = any(p > 0 for p in padding) if isinstance(padding, tuple | list) else padding > 0
            if named.get("divisor_override") is not None or (padded and named.get("count_include_pad", True)):
                return "avg_pool2d averages zero padding"
        if step.name == "dropout" and step.kwargs.get("training", step.args[2] if len(step.args) > 2 else True):
            return "dropout in training mode"
    return None


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
        tensor, position, clamps, steps = op.outputs[0], index, [], []
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
                steps.append(step)
                position = later[0]  # later readers of the same tensor read this op's result
                continue
            if len(later) > 1:  # read elsewhere too: a residual branch, a second consumer
                break
            if passes or clamp:
                clamps += [step.module] if clamp else []
                steps.append(step)
                tensor, position = step.outputs[0], later[0]
                continue
            if step.name in {"conv2d", "linear"} and step.module and calls.get(step.module) == 1 \
                    and step.refs()[0] == tensor:
                consumer = model.get_submodule(step.module)
                channels = producer.weight.shape[0]
                takes = consumer.in_features if isinstance(consumer, nn.Linear) else consumer.in_channels
                if _plain(consumer) and takes == channels and isinstance(consumer, type(producer)):
                    pairs.append(Pair(op.module, step.module, tuple(clamps),
                                      _shift_blocker(producer, consumer, steps)))
            break
    return pairs


def _shift_bounds(model: nn.Module, names: list[str], example_inputs: Any) -> dict[str, torch.Tensor]:
    """``[C]`` per-channel ``min(minimum, mean - 3 std)`` of each named layer's output over ``example_inputs``
    (one eval forward)."""
    from slimtorch.data import call

    found: dict[str, torch.Tensor] = {}

    def record(name: str, module: nn.Module, args: Any, out: torch.Tensor) -> None:
        # read at once: an in-place ReLU after the layer overwrites ``out`` before the forward ends
        dim = out.dim() - 3 if isinstance(module, nn.Conv2d) else out.dim() - 1  # [N,] C, H, W or [..., C]
        z = out.detach().transpose(0, dim).reshape(out.shape[dim], -1).double()  # [C, every other element]
        std, mean = torch.std_mean(z, dim=1, correction=0)
        found[name] = torch.minimum(z.amin(1), mean - 3 * std).float()

    hooks = [model.get_submodule(n).register_forward_hook(lambda m, a, o, _n=n: record(_n, m, a, o)) for n in names]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            call(model, example_inputs)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return found


def _absorb_into_bias(consumer: nn.Module, c: torch.Tensor) -> None:
    """Add what ``consumer`` reads of a constant input ``c`` (``[C_in]``) to its bias, in place: ``W2 c``, for a
    convolution summed over the kernel (exact only where no padding is read)."""
    w = consumer.weight.detach().double()
    if isinstance(consumer, nn.Linear):
        delta = w @ c.double()
    else:
        groups, cin_g = consumer.groups, w.shape[1]
        # [out, cin/groups, k...] -> [groups, out/groups, cin/groups] (kernel summed)
        w = w.reshape(groups, w.shape[0] // groups, cin_g, -1).sum(-1)
        delta = (w * c.double().view(groups, 1, cin_g)).sum(-1).reshape(-1)  # [groups, out/groups] -> [out]
    consumer.bias.data.add_(delta.to(consumer.bias.dtype))


def absorb_high_biases(model: nn.Module, pairs: list[Pair], example_inputs: Any) -> list[Pair]:
    """High-bias absorption (module docstring) on every pair whose ``absorb_blocked`` is None, in place: shift
    each producer channel down by ``c_i = max(0, min(mean_i - 3 std_i, min_i))`` of its pre-activation over
    ``example_inputs`` (capped at the chain's clamp bounds) and add what the consumer reads of ``c`` to its bias.
    The float model's outputs on ``example_inputs`` do not change (up to float rounding); ``shifted`` and
    ``largest_shift`` of each pair are set.

    Args:
        model: the model, its ``Hardtanh(0, v)`` clamps already :class:`ChannelClamp` (as :func:`equalize` leaves
            them).
        pairs: pairs from :func:`find_pairs`.
        example_inputs: inputs for one forward; ``c`` is exact on them.

    Returns:
        ``pairs``, updated.

    Example:
        >>> model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 2, 1)).eval()
        >>> _ = model[0].bias.data.add_(100.0)
        >>> x = torch.randn(2, 3, 8, 8)
        >>> [p.shifted for p in absorb_high_biases(model, find_pairs(model, x), x)]
        [4]
    """
    live = [p for p in pairs if p.absorb_blocked is None]
    if not live:
        return pairs
    # one forward is enough: each absorption leaves the consumer's output (the next pair's pre-activation) as it was
    bounds = _shift_bounds(model, [p.producer for p in live], example_inputs)
    for pair in live:
        if pair.producer not in bounds:  # not reached on these inputs: nothing observed to shift by
            continue
        c = bounds[pair.producer].clamp(min=0)
        clamps = [model.get_submodule(n) for n in pair.clamps]
        for clamp in clamps:  # values above a clamp's bound leave it at the bound: shift no further than that
            c = torch.minimum(c, clamp.upper.float())
        if not bool((c > 0).any()):
            continue
        producer, consumer = model.get_submodule(pair.producer), model.get_submodule(pair.consumer)
        producer.bias.data.sub_(c.to(producer.bias.dtype))
        for clamp in clamps:
            clamp.upper.sub_(c.to(clamp.upper.dtype))
        _absorb_into_bias(consumer, c)
        pair.shifted, pair.largest_shift = int((c > 0).sum()), float(c.max())
    return pairs


def equalize(model: nn.Module, example_inputs: Any, *, rounds: int = 20, tolerance: float = 1e-3,
             absorb: bool = True) -> list[Pair]:
    """Equalize every pair :func:`find_pairs` finds, in place, repeating over all pairs (a layer in two pairs,
    e.g. the middle of conv -> depthwise -> conv, is balanced against both) until no scale moves by more than
    ``tolerance`` or ``rounds`` passes, then absorb high biases (:func:`absorb_high_biases`). Scaling leaves the
    float model's outputs unchanged (up to float rounding); absorption leaves them unchanged on
    ``example_inputs``, and on other inputs wherever a shifted channel's pre-activation stays above its shift.

    Args:
        model: the model, BatchNorm already folded (a BatchNorm between two layers ends a chain).
        example_inputs: inputs for one traced forward; high-bias absorption measures its shifts on them.
        rounds: at most this many passes over the pairs.
        tolerance: stop when every scale of a pass is within this of 1.
        absorb: run high-bias absorption after the scaling.

    Returns:
        The pairs equalized, with what was absorbed (``shifted``, ``largest_shift``, ``absorb_blocked``).

    Example:
        >>> model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 1)).eval()
        >>> [(p.producer, p.consumer) for p in equalize(model, torch.randn(1, 3, 8, 8))]
        [('0', '2')]
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
    if absorb:
        absorb_high_biases(model, pairs, example_inputs)
    return pairs
