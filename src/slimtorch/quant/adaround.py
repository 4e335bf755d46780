"""AdaRound (Nagel et al. 2020, "Up or Down? Adaptive Rounding for Post-Training Quantization") as pure math.

Nearest rounding minimises each weight's own error, not the error of the layer's output. AdaRound learns, per
weight, whether to round down or up (``floor(w / s)`` or one more) so that the layer's output on calibration
inputs stays close to the float output. It relaxes the binary choice to a rectified sigmoid ``h(V)`` in [0, 1],
minimises the output error plus a regulariser that pushes every ``h`` to 0 or 1, and reads the choice off at
the end. The scales are given (symmetric, zero point 0, as :func:`slimtorch.quant.ptq.quantize_weight` makes
them); only the rounding changes, so every code is within 1 of the nearest one.

The math (:func:`adaround`) is pure; :func:`capture_inputs` and :func:`round_layer` wire it into
``StaticQuant(adaround=True)``, layer by layer on each layer's calibration inputs.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from slimtorch.data import iter_inputs, run_hooked
from slimtorch.errors import ConfigError
from slimtorch.quant.qparams import qrange, quantize

ZETA, GAMMA = 1.1, -0.1  # stretch of the rectified sigmoid, so h reaches exactly 0 and 1 (paper, eq. 23)


@dataclass(frozen=True)
class AdaRoundResult:
    """What :func:`adaround` chose and how well it did.

    Attributes:
        codes: int8 integer codes of the weight's shape; the weight is ``codes * scale`` (per output channel).
        loss_nearest: mean squared error of the layer's output over all inputs with nearest rounding.
        loss: the same objective with ``codes`` (never above ``loss_nearest``).
        iterations: optimizer steps actually run (fewer than asked when the deadline stopped it).
    """

    codes: torch.Tensor
    loss_nearest: float
    loss: float
    iterations: int


def rectified_sigmoid(v: torch.Tensor) -> torch.Tensor:
    """``clamp(sigmoid(v) * (zeta - gamma) + gamma, 0, 1)``: the soft rounding choice in [0, 1], v's shape."""
    return torch.clamp(torch.sigmoid(v) * (ZETA - GAMMA) + GAMMA, 0.0, 1.0)


def output_mse(layer_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], inputs: torch.Tensor,
               weight: torch.Tensor, candidates: list[torch.Tensor], chunk: int = 256) -> list[float]:
    """Mean squared error of ``layer_fn(inputs, c)`` against ``layer_fn(inputs, weight)`` for each candidate
    weight ``c``, over all of ``inputs`` (in chunks of ``chunk`` samples, accumulated in float64).

    Returns:
        One float per candidate (units of the layer's output, squared).
    """
    sums, count = [0.0] * len(candidates), 0
    with torch.no_grad():
        for start in range(0, inputs.shape[0], chunk):
            x = inputs[start:start + chunk].to(device=weight.device, dtype=torch.float32)
            target = layer_fn(x, weight).double()
            count += target.numel()
            for i, c in enumerate(candidates):
                sums[i] += float(((layer_fn(x, c).double() - target) ** 2).sum())
    return [s / max(count, 1) for s in sums]


def _check(weight: torch.Tensor, scale: torch.Tensor, inputs: torch.Tensor, bits: int, iterations: int,
           batch_size: int, lr: float, reg_weight: float, beta: tuple[float, float], warmup: float) -> None:
    """Raise :class:`ConfigError` naming the first bad argument of :func:`adaround`."""
    if not weight.is_floating_point() or weight.dim() < 2:
        raise ConfigError(f"adaround: weight must be a float tensor [out, in] or [out, in/groups, kh, kw], "
                          f"got {weight.dtype} of shape {tuple(weight.shape)}")
    if tuple(scale.shape) != (weight.shape[0],):
        raise ConfigError(f"adaround: scale must have one entry per output channel, shape ({weight.shape[0]},), "
                          f"got shape {tuple(scale.shape)} for a weight of shape {tuple(weight.shape)}")
    if not bool(torch.all(torch.isfinite(scale) & (scale > 0))):
        raise ConfigError("adaround: every scale must be finite and positive; got "
                          f"min {float(scale.min()):.3g}, max {float(scale.max()):.3g}")
    if inputs.dim() == 0 or inputs.shape[0] == 0 or inputs.numel() == 0:
        raise ConfigError(f"adaround: inputs are empty (shape {tuple(inputs.shape)}); pass N >= 1 samples")
    if isinstance(bits, bool) or not isinstance(bits, int) or not 2 <= bits <= 8:
        raise ConfigError(f"adaround: bits={bits!r} is not supported; allowed: an integer from 2 to 8")
    for name, value, ok, allowed in [
        ("iterations", iterations, isinstance(iterations, int) and iterations >= 0, "an integer >= 0"),
        ("batch_size", batch_size, isinstance(batch_size, int) and batch_size >= 1, "an integer >= 1"),
        ("lr", lr, math.isfinite(lr) and lr > 0, "a positive number"),
        ("reg_weight", reg_weight, math.isfinite(reg_weight) and reg_weight >= 0, "a number >= 0"),
        ("beta", beta, len(beta) == 2 and all(math.isfinite(b) and b > 0 for b in beta), "two positive numbers"),
        ("warmup", warmup, 0 <= warmup <= 1, "a fraction in [0, 1]"),
    ]:
        if not ok:
            raise ConfigError(f"adaround: {name}={value!r} is not allowed; allowed: {allowed}")


def adaround(weight: torch.Tensor, scale: torch.Tensor, layer_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
             inputs: torch.Tensor, *, bits: int = 8, iterations: int = 500, batch_size: int = 32, lr: float = 1e-2,
             reg_weight: float = 0.01, beta: tuple[float, float] = (20.0, 2.0), warmup: float = 0.2,
             deadline: float | None = None, seed: int = 0) -> AdaRoundResult:
    """Choose per weight whether to round down or up so that the layer's output stays close to the float one.

    Each step draws ``batch_size`` samples of ``inputs`` (seeded), computes the soft weight
    ``scale * clamp(floor(w / scale) + h(V), qmin, qmax)`` and minimises the mean squared error of
    ``layer_fn(x, soft_w)`` against ``layer_fn(x, weight)``, relative to the target's mean square, plus
    ``reg_weight * mean(1 - |2 h(V) - 1| ** beta_t)`` over the weights
    (no regulariser during the first ``warmup`` fraction of steps, then ``beta_t`` falls linearly from
    ``beta[0]`` to ``beta[1]``), with Adam on V only. The codes are ``clamp(floor(w / scale) + (h(V) >= 0.5))``.

    Never worse than nearest rounding on its own objective: both sets of codes are scored by the mean squared
    output error over ALL ``inputs``, and the nearest codes (``round(w / scale)``, as ``quantize_weight``
    makes them) are returned when AdaRound's are not at least as good.

    Args:
        weight: float weight of a Linear ``[out, in]`` or Conv2d ``[out, in/groups, kh, kw]``; not changed.
        scale: per-output-channel scale ``[out]``, positive (symmetric, zero point 0).
        layer_fn: ``layer_fn(x, w)`` -> the layer's output without bias, e.g.
            ``lambda x, w: F.conv2d(x, w, None, stride, padding, dilation, groups)``.
        inputs: N samples of the layer's input along dim 0 (any device; moved to the weight's in batches).
        bits: signed code width, 2..8 (int8: codes in [-128, 127]).
        iterations: optimizer steps; 0 returns nearest rounding.
        batch_size: samples per step (also sets the chunk size of the final scoring).
        lr: Adam learning rate on V.
        reg_weight: weight of the rounding regulariser.
        beta: start and end exponent of the regulariser's annealing.
        warmup: fraction of steps (0-1) without the regulariser.
        deadline: a ``time.perf_counter()`` value (seconds); optimization stops when it passes.
        seed: seed of the mini-batch draws; the same seed gives the same codes (on CPU).

    Returns:
        :class:`AdaRoundResult`: int8 codes of the weight's shape, both losses and the steps run.

    Raises:
        ConfigError: mismatched weight/scale shapes, a non-positive scale, empty inputs, bits outside 2..8 or
            another bad option (the message names it).
    """
    _check(weight, scale, inputs, bits, iterations, batch_size, lr, reg_weight, beta, warmup)
    qmin, qmax = qrange(bits, signed=True)
    w = weight.detach().float()
    s = scale.detach().to(device=w.device, dtype=torch.float32)
    s_b = s.reshape(-1, *[1] * (w.dim() - 1))  # [out, 1, ...], broadcasts against w
    x_all = inputs.detach()
    nearest = quantize(w, s, torch.zeros_like(s, dtype=torch.int32), bits=bits, signed=True, axis=0)

    w_floor = torch.floor(w / s_b)
    frac = w / s_b - w_floor  # in [0, 1): h(V) starts here, so the soft weight starts at w (up to clamping)
    p = ((frac - GAMMA) / (ZETA - GAMMA)).clamp(1e-6, 1 - 1e-6)
    v = torch.log(p / (1 - p)).requires_grad_(True)  # inverse of the rectified sigmoid
    opt = torch.optim.Adam([v], lr=lr)
    gen = torch.Generator().manual_seed(seed)
    n, warm, steps = x_all.shape[0], int(warmup * iterations), 0
    with torch.enable_grad():
        for t in range(iterations):
            if deadline is not None and time.perf_counter() >= deadline:
                break
            idx = torch.randperm(n, generator=gen)[:batch_size]
            x = x_all[idx.to(x_all.device)].to(device=w.device, dtype=torch.float32)
            with torch.no_grad():
                target = layer_fn(x, w)
            h = rectified_sigmoid(v)
            # both terms dimensionless, so reg_weight means the same for every layer size and output scale
            loss = F.mse_loss(layer_fn(x, s_b * torch.clamp(w_floor + h, qmin, qmax)), target) \
                / target.pow(2).mean().clamp_min(1e-12)
            if t >= warm and reg_weight > 0:
                b = beta[0] + (beta[1] - beta[0]) * (t - warm) / max(iterations - warm, 1)
                loss = loss + reg_weight * (1 - (2 * h - 1).abs().pow(b)).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            steps += 1

    codes = torch.clamp(w_floor + (rectified_sigmoid(v.detach()) >= 0.5).float(), qmin, qmax).to(torch.int8)
    chunk = max(4 * batch_size, 64)
    candidates = [nearest.float() * s_b] + ([] if steps == 0 else [codes.float() * s_b])
    losses = output_mse(layer_fn, x_all, w, candidates, chunk)
    if steps == 0 or losses[1] > losses[0]:  # the guarantee: never worse than nearest rounding on the objective
        return AdaRoundResult(nearest, losses[0], losses[0], steps)
    return AdaRoundResult(codes, losses[0], losses[1], steps)


#: samples of each layer's input kept for AdaRound: rows of a Linear's input, images of a convolution's
ROWS, IMAGES = 1024, 32


def capture_inputs(model: nn.Module, names: list[str], data: Any, num_batches: int) -> dict[str, torch.Tensor]:
    """The inputs each layer in ``names`` receives on ``num_batches`` of ``data`` (float model), at most
    :data:`ROWS` rows for a Linear (leading dimensions flattened) and :data:`IMAGES` images for a convolution.

    Returns:
        layer name -> float32 tensor of samples along dim 0 (layers that never ran are missing).
    """
    kept: dict[str, list[torch.Tensor]] = {n: [] for n in names}

    def keep(module: nn.Module, args: tuple, name: str) -> None:
        x = args[0].detach().float()
        conv = isinstance(module, nn.Conv2d)
        x = x if conv else x.reshape(-1, x.shape[-1])
        room = (IMAGES if conv else ROWS) - sum(t.shape[0] for t in kept[name])
        if room > 0:
            kept[name].append(x[:room].cpu())

    hooks = {model.get_submodule(n): (lambda m, a, n=n: keep(m, a, n)) for n in names}
    run_hooked(model, iter_inputs(data, num_batches), pre=hooks)
    return {n: torch.cat(xs) for n, xs in kept.items() if xs}


def round_layer(layer: nn.Module, plain: nn.Module, inputs: torch.Tensor, *, deadline: float, seed: int
                ) -> AdaRoundResult:
    """Replace the nearest-rounded codes of a static int8 ``layer`` (built from the float ``plain`` layer, its
    input grid set) by AdaRound's, in place; the inputs are fake-quantized on the layer's own input grid first.

    Returns:
        The :class:`AdaRoundResult` (its losses: mean squared output error, nearest and chosen).
    """
    if isinstance(plain, nn.Conv2d):
        def layer_fn(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
            return F.conv2d(x, w, None, plain.stride, plain.padding, plain.dilation, plain.groups)
        batch = 4
    else:
        def layer_fn(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
            return F.linear(x, w)
        batch = 32
    x = layer._fake_input(inputs)
    result = adaround(plain.weight, layer.weight_scale, layer_fn, x, bits=layer.bits, batch_size=batch,
                      deadline=deadline, seed=seed)
    layer.qweight = result.codes
    layer._cache = {}
    return result
