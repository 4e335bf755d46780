"""Training-time binary/ternary layers: float latent weights, rounded in the forward pass through the STE.

``BinaryQATLinear`` and ``BinaryQATConv2d`` are ``nn.Linear`` / ``nn.Conv2d`` subclasses, so optimizers,
``slimtorch.finetune`` and checkpoints treat them as the layers they replace. Their forward pass uses
``alpha * sign(w)`` (binary) or ``alpha * ternary(w)`` and, with ``activations=True``, the input
``sign(x - input_shift)``; gradients flow through the clipped straight-through estimator. ``pack()`` returns
the packed inference layer (:mod:`.modules`) computing the same function.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from slimtorch.io.manifest import register_module
from slimtorch.layer_kinds import pad_same
from slimtorch.quant.binary.math import TWN_THRESHOLD, binarize_input, fake_binary_weight, fake_ternary_weight
from slimtorch.quant.binary.modules import BinaryConv2d, BinaryLinear


class _FakeBinary:
    """Shared parts of the two training layers (a mixin; the torch layer supplies weight and bias)."""

    weight: torch.Tensor

    def _init_fake(self, channels: int, ternary: bool, activations: bool, threshold: float) -> None:
        if ternary and activations:
            raise ValueError("binary activations are supported with binary weights only, not ternary")
        self.ternary, self.activations, self.threshold = bool(ternary), bool(activations), float(threshold)
        if activations:
            self.input_shift = nn.Parameter(torch.zeros(int(channels), device=self.weight.device))
        else:
            self.register_parameter("input_shift", None)

    def fake_weight(self) -> torch.Tensor:
        """The rounded weight used in the forward pass (differentiable through the STE)."""
        if self.ternary:
            return fake_ternary_weight(self.weight, self.threshold)
        return fake_binary_weight(self.weight)

    def fake_input(self, x: torch.Tensor) -> torch.Tensor:
        """``sign(x - input_shift)`` with the STE for fully binary layers, ``x`` otherwise."""
        return binarize_input(x, self.input_shift) if self.activations else x

    def _mode_args(self) -> dict[str, Any]:
        return {"ternary": self.ternary, "activations": self.activations, "threshold": self.threshold}


@register_module
class BinaryQATLinear(_FakeBinary, nn.Linear):
    """``nn.Linear`` trained with binary or ternary weights (and optionally binary inputs)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, ternary: bool = False,
                 activations: bool = False, threshold: float = TWN_THRESHOLD) -> None:
        nn.Linear.__init__(self, in_features, out_features, bias)
        self._init_fake(in_features, ternary, activations, threshold)

    @classmethod
    def from_float(cls, linear: nn.Linear, **mode: Any) -> BinaryQATLinear:
        """A training twin of ``linear`` sharing a copy of its weight and bias."""
        layer = cls(linear.in_features, linear.out_features, linear.bias is not None, **mode)
        layer.load_state_dict(linear.state_dict(), strict=False)
        return layer.to(linear.weight.device, linear.weight.dtype)  # trains in the model's dtype

    def manifest_args(self) -> dict[str, Any]:
        """Constructor arguments for ``slimtorch.save``."""
        return {"in_features": self.in_features, "out_features": self.out_features, "bias": self.bias is not None,
                **self._mode_args()}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self.fake_input(x), self.fake_weight(), self.bias)

    def pack(self) -> BinaryLinear:
        """The packed inference layer with the same codes, scales, bias and input threshold."""
        return BinaryLinear.from_float(self, ternary=self.ternary, activations=self.activations,
                                       threshold=self.threshold, input_shift=self.input_shift)


@register_module
class BinaryQATConv2d(_FakeBinary, nn.Conv2d):
    """``nn.Conv2d`` (groups=1, zero padding) trained with binary or ternary weights (and binary inputs).

    ``same_pad`` (set when it replaced a TensorFlow-"same" padded convolution): the (binarized) input is padded
    with zeros as :func:`slimtorch.layer_kinds.pad_same` does before the padding-0 convolution.
    """

    same_pad = False

    def __init__(self, in_channels: int, out_channels: int, kernel_size: Any, stride: Any = 1, padding: Any = 0,
                 dilation: Any = 1, bias: bool = True, ternary: bool = False, activations: bool = False,
                 threshold: float = TWN_THRESHOLD) -> None:
        nn.Conv2d.__init__(self, in_channels, out_channels, kernel_size, stride, padding, dilation, bias=bias)
        self._init_fake(in_channels, ternary, activations, threshold)
        self.same_pad = False  # an instance attribute too: slimtorch.load sets the recorded value

    @classmethod
    def from_float(cls, conv: nn.Conv2d, **mode: Any) -> BinaryQATConv2d:
        """A training twin of ``conv`` (groups=1, numeric zero padding) with a copy of its weight and bias."""
        if conv.groups != 1 or conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise ValueError("binary convolutions need groups=1, padding_mode='zeros' and numeric padding")
        layer = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                    conv.dilation, conv.bias is not None, **mode)
        layer.load_state_dict(conv.state_dict(), strict=False)
        return layer.to(conv.weight.device, conv.weight.dtype)  # trains in the model's dtype

    def manifest_args(self) -> dict[str, Any]:
        """Constructor arguments for ``slimtorch.save``."""
        return {"in_channels": self.in_channels, "out_channels": self.out_channels,
                "kernel_size": list(self.kernel_size), "stride": list(self.stride), "padding": list(self.padding),
                "dilation": list(self.dilation), "bias": self.bias is not None, **self._mode_args()}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.fake_input(x)
        if self.same_pad:
            x = pad_same(x, self.kernel_size, self.stride, self.dilation)
        return self._conv_forward(x, self.fake_weight(), self.bias)

    def pack(self) -> BinaryConv2d:
        """The packed inference layer with the same codes, scales, bias and input threshold."""
        return BinaryConv2d.from_float(self, ternary=self.ternary, activations=self.activations,
                                       threshold=self.threshold, input_shift=self.input_shift)
