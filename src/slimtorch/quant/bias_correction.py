"""Empirical bias correction (Nagel et al. 2019, section 4.2): quantizing a layer's weights and inputs shifts the
mean of its outputs (the rounding errors of a channel do not average out to zero), and the next layers amplify
the shift. For each quantized layer, in execution order, the mean output per channel of the quantized model is
measured on calibration data against the float model's and subtracted from the layer's bias; later layers are
measured with the earlier corrections in place, so each removes only its own shift.

The comparison is on the layer's pre-activation output: a fused ReLU clips a shifted distribution differently,
so the quantized side is read from the layer's float reference with the fused ReLU off (what the integer kernel
computes before its ReLU, within float rounding).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from slimtorch.data import call


class _Stop(Exception):
    """Raised by a hook once the layer it watches has run: the rest of the forward is not needed."""


def channel_mean(out: torch.Tensor, channel_dim: int) -> tuple[torch.Tensor, int]:
    """Sum over every dimension but ``channel_dim`` and the number of values summed per channel.

    Returns:
        ``(sums [C] float64, count)``.
    """
    dim = channel_dim % out.dim()
    moved = out.detach().double().movedim(dim, -1)
    flat = moved.reshape(-1, moved.shape[-1])
    return flat.sum(0), flat.shape[0]


@contextlib.contextmanager
def _without_relu(layer: nn.Module) -> Iterator[None]:
    relu = getattr(layer, "relu", False)
    layer.relu = False
    try:
        yield
    finally:
        layer.relu = relu


def _channel_dim(layer: nn.Module) -> int:
    return 1 if hasattr(layer, "in_channels") else -1


def _mean_outputs(model: nn.Module, names: list[str], batches: list[Any], quantized: bool
                  ) -> dict[str, torch.Tensor]:
    """Mean output per channel of each layer in ``names`` over ``batches``, in the order the layers ran
    (pre-activation for quantized layers). With one name, each forward stops right after that layer."""
    sums: dict[str, list] = {}

    def hook(module: nn.Module, args: tuple, out: torch.Tensor, name: str) -> None:
        if quantized:
            with _without_relu(module):
                out = module.reference(args[0])
        s, n = channel_mean(out, _channel_dim(module))
        total = sums.setdefault(name, [0.0, 0])
        total[0], total[1] = total[0] + s, total[1] + n
        if len(names) == 1:
            raise _Stop

    handles = [model.get_submodule(n).register_forward_hook(lambda m, a, o, n=n: hook(m, a, o, n)) for n in names]
    try:
        with torch.no_grad():
            for inputs in batches:
                with contextlib.suppress(_Stop):
                    call(model, inputs)
    finally:
        for h in handles:
            h.remove()
    return {n: (total / count).float() for n, (total, count) in sums.items()}


def correct_biases(model: nn.Module, reference: nn.Module, names: list[str], batches: list[Any]) -> dict[str, float]:
    """Remove the mean output shift of each quantized layer in ``names``, in execution order, in place.

    Args:
        model: the quantized model; its layers ``names`` are static int8 layers (``reference()``, ``relu``,
            ``set_input_grid``), the rest as in ``reference``.
        reference: the float model the quantized one came from (same layer names, eval mode).
        names: the quantized layers.
        batches: calibration inputs.

    Returns:
        For each layer that ran, in execution order, the largest per-channel shift removed (units of its output).
    """
    targets = _mean_outputs(reference, names, batches, quantized=False)  # one pass; the float model does not change
    removed = {}
    for name, target in targets.items():
        layer = model.get_submodule(name)
        shift = _mean_outputs(model, [name], batches, quantized=True)[name] - target
        layer.bias = (-shift if layer.bias is None else layer.bias - shift).to(torch.float32)
        layer.set_input_grid(layer.input_scale, layer.input_zero_point, layer.input_bits)  # bias back on the grid
        removed[name] = float(shift.abs().max())
    return removed
