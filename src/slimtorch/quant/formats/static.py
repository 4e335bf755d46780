"""Static int8: int8 per-channel weights and uint8 activations on a grid calibrated ahead of time, on oneDNN.

:class:`StaticQuantLinear` and :class:`QuantConv2d` quantize their input with the fixed ``input_scale`` /
``input_zero_point`` (codes 0..2**input_bits - 1), multiply in integers and may apply a fused ReLU. On a CPU
whose uint8 x int8 products saturate (quant/kernels.py), a layer calibrated with 8-bit codes elsewhere runs its
float reference instead, and says so once in the log.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from slimtorch._log import logger
from slimtorch.io.manifest import register_module
from slimtorch.layer_kinds import pad_same
from slimtorch.quant import kernels
from slimtorch.quant.modules import FixedMode, QuantLinear, _outside_graph, _QuantBase
from slimtorch.quant.qparams import dequantize, fake_quantize, int32_bias


class _StaticInput:
    """The calibrated uint8 input grid of a static layer (mixed into a :class:`_QuantBase` subclass)."""

    mode = FixedMode("static")

    def _init_input(self, input_bits: int) -> None:
        self.input_bits = input_bits
        self.register_buffer("input_scale", torch.tensor(1.0))
        self.register_buffer("input_zero_point", torch.tensor(0, dtype=torch.int32))

    def _input_qparams(self) -> tuple[float, int]:
        """The static input grid as Python numbers (cached with the packed weight: read once, not per call)."""
        return float(self.input_scale), int(self.input_zero_point)

    def set_input_grid(self, scale: torch.Tensor, zero_point: torch.Tensor, bits: int) -> None:
        """Set the input quantization (uint8 codes 0..2**bits - 1) and put the bias on the int32 grid of
        ``input_scale * weight_scale``, as int8 runtimes hold a bias (ONNX Runtime's QDQ format): the layer and
        its ONNX export then add the same bias, where a bias rounded only in the export differs by up to half a
        step, enough to flip codes in the next layer and, in deep networks, to grow."""
        self.input_scale, self.input_zero_point, self.input_bits = scale, zero_point, bits
        if self.bias is not None:
            step = scale.float() * self.weight_scale
            self.bias = int32_bias(self.bias, step) * step
        self._cache = {}

    def _fake_input(self, x: torch.Tensor) -> torch.Tensor:
        """The float values the layer's uint8 input represents (reference path)."""
        return fake_quantize(x, self.input_scale, self.input_zero_point, bits=self.input_bits, signed=False)

    def _saturates(self) -> bool:
        """Whether this CPU's int8 kernel would saturate on this layer's 8-bit input codes (it was calibrated
        on a CPU with VNNI): the layer then runs its float reference, logged once per layer."""
        if not (kernels.U8S8_SATURATES and self.input_bits > 7):
            return False
        if "saturates" not in self._cache:
            self._cache["saturates"] = True
            logger.warning("%s has 8-bit input codes, which this CPU's int8 kernels (no VNNI) cannot multiply "
                           "exactly: it runs in float. Quantize again on this machine (7-bit codes) for the "
                           "int8 kernels", type(self).__name__)
        return True


@register_module
class StaticQuantLinear(_StaticInput, QuantLinear):
    """Static int8 Linear layer on oneDNN: uint8 input on a calibrated grid, int8 per-channel weight.

    Args:
        in_features, out_features, bias, bits, group_size: as :class:`~slimtorch.quant.modules.QuantLinear`.
        relu: apply ReLU inside the kernel.
        input_bits: width of the input codes, 8 or 7 (see :func:`slimtorch.quant.kernels.activation_bits`).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, bits: int = 8,
                 group_size: int = 0, relu: bool = False, input_bits: int = 8) -> None:
        super().__init__(in_features, out_features, bias, bits=bits, group_size=group_size)
        self.relu = relu
        self._init_input(input_bits)

    def manifest_args(self) -> dict:
        return {**super().manifest_args(), "relu": self.relu, "input_bits": self.input_bits}

    def reference(self, x: torch.Tensor) -> torch.Tensor:
        """Float reference: the fake-quantized input times the dequantized weight (+ bias, ReLU)."""
        out = self._linear(self._fake_input(x))
        return F.relu(out) if self.relu else out

    def int8_kernel(self) -> tuple[torch.Tensor, float, int]:
        """``(oneDNN pre-packed weight, input scale, input zero point)``, built on first use and cached."""
        if "packed" not in self._cache:
            self._cache["packed"] = torch.ops.onednn.qlinear_prepack(self.int_weight(), None)
            self._cache["qparams"] = self._input_qparams()
        return self._cache["packed"], *self._cache["qparams"]

    def _compute(self, x: torch.Tensor) -> torch.Tensor:
        if self._saturates():
            return self.reference(x)
        packed, x_scale, x_zero_point = self.int8_kernel()
        return kernels.qlinear_static(x, packed, x_scale, x_zero_point, self.weight_scale, self.bias, self.relu,
                                      2**self.input_bits - 1)


@register_module
class QuantConv2d(_StaticInput, _QuantBase):
    """Static int8 2-D convolution (grouped and depthwise too) on oneDNN, BatchNorm folded in, ReLU fusable.

    Args:
        in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias: as ``nn.Conv2d``
            (integer padding only).
        bits: weight bit width (2..8, stored as int8).
        relu: apply ReLU inside the kernel.
        input_bits: width of the input codes, 8 or 7.

    ``same_pad`` (set and recorded when the layer replaced a TensorFlow-"same" padded convolution): the input
    is first padded as :func:`slimtorch.layer_kinds.pad_same` does (zeros, which quantize to the zero point).
    """

    same_pad = False

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: list[int], stride: list[int] = (1, 1),
        padding: list[int] = (0, 0), dilation: list[int] = (1, 1), groups: int = 1, bias: bool = True, *,
        bits: int = 8, relu: bool = False, input_bits: int = 8,
    ) -> None:
        super().__init__()
        self.in_channels, self.out_channels, self.groups, self.relu = in_channels, out_channels, groups, relu
        self.kernel_size, self.stride = list(kernel_size), list(stride)
        self.padding, self.dilation = list(padding), list(dilation)
        self.group_size = 0
        self._init_common(out_channels, (out_channels,), bias, bits)
        self._init_input(input_bits)
        self.same_pad = False  # an instance attribute too: slimtorch.load sets the recorded value
        self.register_buffer("qweight", torch.zeros(out_channels, in_channels // groups, *self.kernel_size,
                                                    dtype=torch.int8))

    def manifest_args(self) -> dict:
        return {"in_channels": self.in_channels, "out_channels": self.out_channels,
                "kernel_size": self.kernel_size, "stride": self.stride, "padding": self.padding,
                "dilation": self.dilation, "groups": self.groups, "bias": self.bias is not None,
                "bits": self.bits, "relu": self.relu, "input_bits": self.input_bits}

    def dequantized_weight(self) -> torch.Tensor:
        return dequantize(self.qweight, self.weight_scale, self.weight_zero_point, axis=0)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"groups={self.groups}, bits={self.bits}, relu={self.relu}")

    def reference(self, x: torch.Tensor) -> torch.Tensor:
        """Float reference: the fake-quantized input through a float conv with the dequantized weight."""
        if self.same_pad:
            x = pad_same(x, self.kernel_size, self.stride, self.dilation)
        out = F.conv2d(self._fake_input(x.float()), self.dequantized_weight(), self.bias, self.stride,
                       self.padding, self.dilation, self.groups)
        return F.relu(out) if self.relu else out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 3:  # unbatched (C, H, W), as nn.Conv2d accepts it
            return self.forward(x.unsqueeze(0)).squeeze(0)
        if not x.is_cpu:
            return self.reference(x).to(x.dtype)
        if x.dtype != torch.float32:  # the CPU kernels take float32 activations: compute in float32, return x's dtype
            return self.forward(x.float()).to(x.dtype)
        if self._saturates():
            return self.reference(x)
        if torch.compiler.is_compiling() and not self._traceable(x.shape[0]):
            return _outside_graph(self, x)
        if self.same_pad:
            x = pad_same(x, self.kernel_size, self.stride, self.dilation)
        packed, x_scale, x_zero_point = self.int8_kernel()
        return kernels.qconv2d(x, packed, x_scale, x_zero_point, self.weight_scale, self.bias, self.stride,
                               self.padding, self.dilation, self.groups, self.relu, 2**self.input_bits - 1)

    def int8_kernel(self) -> tuple[torch.Tensor, float, int]:
        """``(oneDNN pre-packed weight, input scale, input zero point)``, built on first use and cached."""
        if "packed" not in self._cache:
            self._cache["qparams"] = self._input_qparams()
            self._cache["packed"] = torch.ops.onednn.qconv_prepack(
                self.qweight, self.weight_scale, *self._cache["qparams"], self.stride, self.padding, self.dilation,
                self.groups, None)
        return self._cache["packed"], *self._cache["qparams"]
