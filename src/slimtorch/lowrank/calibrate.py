"""What decomposition learns from data: positions per layer, input second moments and per-layer sensitivity.

All three come from real forwards of the model with hooks on the chosen layers.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from slimtorch.data import call, first_tensor, run_hooked
from slimtorch.graph.surgery import replace_layer
from slimtorch.layer_kinds import pad_same
from slimtorch.lowrank.layers import Layer, Rank


def _padding(module: nn.Conv2d) -> tuple[int, int]:
    """Numeric padding for unfolding (a 'same' string becomes the symmetric padding it mostly is)."""
    if module.padding == "valid":
        return 0, 0
    if module.padding == "same":
        return tuple(d * (k - 1) // 2 for d, k in zip(module.dilation, module.kernel_size, strict=True))
    return tuple(module.padding)


def input_rows(layer: Layer, x: torch.Tensor) -> torch.Tensor:
    """The vectors the layer's matrix view multiplies, one per row (N, d), from its input ``x``.

    Linear: the last axis. Conv SVD: unfolded k x k patches (in*kh*kw). Spatial SVD: unfolded kh x 1 patches
    (in*kh). Tucker-2: the input channels at every pixel (in).
    """
    m = layer.module
    if isinstance(m, nn.Linear):
        return x.reshape(-1, x.shape[-1])
    if layer.method == "tucker":
        return x.movedim(1, -1).reshape(-1, x.shape[1])  # (B, C, H, W) -> (B*H*W, C)
    (kh, kw), (sh, sw), (dh, dw), (ph, pw) = m.kernel_size, m.stride, m.dilation, _padding(m)
    if layer.method == "spatial_svd":
        kw, sw, dw, pw = 1, 1, 1, 0
    patches = F.unfold(x, (kh, kw), dilation=(dh, dw), padding=(ph, pw), stride=(sh, sw))  # (B, C*kh*kw, L)
    return patches.transpose(1, 2).reshape(-1, patches.shape[1])


def _positions(layer: Layer, x: torch.Tensor, y: torch.Tensor) -> tuple[int, int, int]:
    if isinstance(layer.module, nn.Linear):
        tokens = x.numel() // x.shape[-1]
        return tokens, tokens, tokens
    b, _, _, w_in = x.shape
    h_out, w_out = y.shape[-2:]
    return b * x.shape[2] * w_in, b * h_out * w_out, b * h_out * w_in


def record(model: nn.Module, layers: Sequence[Layer], batches: Iterable[Any], moments: bool) -> None:
    """Run ``batches`` through ``model``; set each layer's positions (from the first batch) and, when
    ``moments``, its input second moments ``E[x x^T]`` as a whitening (``layer.white``)."""
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}
    seen: set[str] = set()

    def hook_for(layer: Layer):
        def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            x = args[0].detach()
            if layer.same_pad:  # what the padding-0 plain conv sees
                m = layer.module
                x = pad_same(x, m.kernel_size, m.stride, m.dilation)
            if layer.name not in seen:
                seen.add(layer.name)
                layer.in_positions, layer.out_positions, layer.mid_positions = _positions(layer, x, output)
            if moments:
                rows = input_rows(layer, x).double()
                sums[layer.name] = sums.get(layer.name, 0) + rows.T @ rows
                counts[layer.name] = counts.get(layer.name, 0) + rows.shape[0]

        return hook

    run_hooked(model, batches, post={layer.in_model: hook_for(layer) for layer in layers})
    if moments:
        from slimtorch.lowrank.svd import whitening

        for layer in layers:
            if layer.name in sums:
                layer.white = whitening(sums[layer.name] / counts[layer.name])



def output_error(model: nn.Module, batches: Sequence[Any], reference: Sequence[torch.Tensor]) -> float:
    """Relative squared error ``sum ||y - y_ref||^2 / sum ||y_ref||^2`` of the model's outputs (fraction)."""
    num = den = 0.0
    with torch.no_grad():
        for inputs, ref in zip(batches, reference, strict=True):
            y = first_tensor(call(model, inputs)).float()
            num += float((y - ref).pow(2).sum())
            den += float(ref.pow(2).sum())
    return num / max(den, 1e-30)


#: a relative output error past which the model's output is no longer useful; lower ranks are not tried
ERROR_CAP = 0.5


def sensitivity(
    model: nn.Module, layer: Layer, ranks: Sequence[Rank], batches: Sequence[Any], reference: Sequence[torch.Tensor]
) -> dict[Rank, float]:
    """Output error of the model with only ``layer`` factorized, for each rank (the layer is restored after).

    Ranks are tried from the largest (by weights) down; once the error passes :data:`ERROR_CAP`, the smaller
    ranks are left out of the result (they would be at least as bad), which saves most of the forwards on
    sensitive layers.
    """
    errors = {}
    for rank in sorted(ranks, key=lambda r: layer.cost(r, "params"), reverse=True):
        original = replace_layer(model, layer.name, layer.build(rank))
        try:
            errors[rank] = output_error(model, batches, reference)
        finally:
            model.set_submodule(layer.name, original)
        if errors[rank] > ERROR_CAP:
            break
    return errors


def reference_outputs(model: nn.Module, batches: Sequence[Any]) -> list[torch.Tensor]:
    """The model's outputs (first tensor, float) on each calibration batch."""
    with torch.no_grad():
        return [first_tensor(call(model, inputs)).detach().float() for inputs in batches]
