"""Fake quantization for training: the straight-through estimator (STE), LSQ learnable scales, and the
training layers ``FakeQuantLinear`` / ``FakeQuantConv2d`` that :func:`slimtorch.prepare_qat` swaps in.

Forward values equal ``quant.qparams.fake_quantize``; backward treats rounding as the identity, so the
gradient with respect to the input is the clipped identity (1 inside the integer range, 0 outside) and the
scale gets the LSQ gradient (Esser et al., 2020), damped by ``1 / sqrt(numel * qmax)``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from slimtorch.layer_kinds import pad_same
from slimtorch.quant.qparams import choose_qparams, minmax, qrange, whole_groups


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """``round(x)`` (half to even) forward, identity backward."""
    return x + (torch.round(x) - x).detach()


def grad_scale(x: torch.Tensor, factor: float) -> torch.Tensor:
    """``x`` forward; gradient multiplied by ``factor`` backward (LSQ's step-size gradient scaling)."""
    return (x - x * factor).detach() + x * factor


def fake_quantize_ste(
    x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor | float, qmin: int, qmax: int
) -> torch.Tensor:
    """``(clamp(round(x / scale) + zero_point, qmin, qmax) - zero_point) * scale`` with STE gradients.

    ``scale`` and ``zero_point`` must already broadcast against ``x``. The gradient to ``x`` is 1 where
    ``x / scale + zero_point`` lies in ``[qmin, qmax]`` and 0 elsewhere; ``scale`` receives the LSQ gradient.
    """
    q = torch.clamp(round_ste(x / scale) + zero_point, qmin, qmax)
    return (q - zero_point) * scale


def _weight_scale(w: torch.Tensor, bits: int, group_size: int | None) -> torch.Tensor:
    lo, hi = minmax(w, axis=0, group_size=group_size)
    return choose_qparams(lo, hi, bits=bits, symmetric=True, signed=True)[0]


class _FakeQuantWeight(nn.Module):
    """Symmetric weight fake quantization with a learnable (LSQ) scale per channel or per group."""

    def _init_quant(self, bits: int, group_size: int | None, act_bits: int | None) -> None:
        self.bits, self.group_size, self.act_bits = bits, group_size, act_bits
        self.weight_scale = nn.Parameter(_weight_scale(self.weight.detach(), bits, group_size))
        # activation range (static QAT): tracked by a moving average in training, frozen in eval
        self.register_buffer("act_min", torch.tensor(float("inf")) if act_bits else None)
        self.register_buffer("act_max", torch.tensor(float("-inf")) if act_bits else None)

    def fake_weight(self) -> torch.Tensor:
        """The weight as the integer layer will see it (fake-quantized, differentiable), in the weight's dtype.

        The scale stays float32 (a bfloat16 scale would round the step size itself), so the rounding is computed
        in float32 and the result cast back to the weight's dtype.
        """
        qmin, qmax = qrange(self.bits, signed=True)
        w = self.weight
        s = grad_scale(self.weight_scale, 1.0 / math.sqrt(w[0].numel() * qmax))
        if self.group_size:  # a short last group is filled with zeros, then cut off again
            wg = whole_groups(w, self.group_size).reshape(w.shape[0], -1, self.group_size)
            fake = fake_quantize_ste(wg, s.unsqueeze(-1), 0.0, qmin, qmax).reshape(w.shape[0], -1)[:, : w.shape[1]]
        else:
            fake = fake_quantize_ste(w, s.reshape(-1, *([1] * (w.dim() - 1))), 0.0, qmin, qmax)
        return fake.to(w.dtype)

    def fake_input(self, x: torch.Tensor) -> torch.Tensor:
        """Fake-quantize the input to uint8 with the tracked range (updated in training mode), in x's dtype."""
        if not self.act_bits:
            return x
        if (self.training or not torch.isfinite(self.act_min)) and x.numel():  # an empty batch has no range
            lo, hi = torch.aminmax(x.detach())
            first = not torch.isfinite(self.act_min)
            self.act_min.copy_(lo if first else self.act_min + 0.01 * (lo - self.act_min))
            self.act_max.copy_(hi if first else self.act_max + 0.01 * (hi - self.act_max))
        scale, zero = choose_qparams(self.act_min, self.act_max, bits=self.act_bits, symmetric=False, signed=False)
        qmin, qmax = qrange(self.act_bits, signed=False)
        return fake_quantize_ste(x, scale, zero.float(), qmin, qmax).to(x.dtype)


class FakeQuantLinear(nn.Linear, _FakeQuantWeight):
    """``nn.Linear`` that trains through fake-quantized weights (and inputs when ``act_bits`` is set)."""

    def __init__(self, linear: nn.Linear, *, bits: int, group_size: int | None = None, act_bits: int | None = None,
                 mode: str = "weight_only") -> None:
        nn.Linear.__init__(self, linear.in_features, linear.out_features, linear.bias is not None,
                           device=linear.weight.device, dtype=linear.weight.dtype)
        self.load_state_dict(linear.state_dict())
        self.mode = mode
        self._init_quant(bits, group_size, act_bits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self.fake_input(x), self.fake_weight(), self.bias)


class FakeQuantConv2d(nn.Conv2d, _FakeQuantWeight):
    """``nn.Conv2d`` that trains through fake-quantized per-channel weights and uint8 inputs.

    ``same_pad`` (set when it replaced a TensorFlow-"same" padded convolution): the fake-quantized input is
    padded as :func:`slimtorch.layer_kinds.pad_same` does before the padding-0 convolution.
    """

    same_pad = False

    def __init__(self, conv: nn.Conv2d, *, bits: int = 8, act_bits: int | None = 8) -> None:
        nn.Conv2d.__init__(self, conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                           conv.dilation, conv.groups, conv.bias is not None, conv.padding_mode,
                           device=conv.weight.device, dtype=conv.weight.dtype)
        self.load_state_dict(conv.state_dict())
        self.mode = "static"
        self._init_quant(bits, None, act_bits)
        self.same_pad = False  # an instance attribute too: slimtorch.load sets the recorded value

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.fake_input(x)
        if self.same_pad:
            x = pad_same(x, self.kernel_size, self.stride, self.dilation)
        return self._conv_forward(x, self.fake_weight(), self.bias)
