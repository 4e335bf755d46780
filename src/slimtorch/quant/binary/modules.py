"""Packed binary and ternary layers for inference: 1 bit (binary) or 2 bits (ternary) per weight in buffers.

They hold state only: packed bits, one float32 scale per output channel, the float bias and, for fully binary
layers, the per-input-channel activation threshold. The arithmetic is in :mod:`.kernels` (products on
the packed bits) and :mod:`.pack`. ``kernel`` picks the path per call:

- ``"packed"``: always compute on the packed bits (lookup tables for real inputs, XNOR-popcount for binary
  inputs); the weights are never expanded to floats.
- ``"unpacked"``: expand the bits to a +-1 / 0 float matrix for this call and use the dense GEMM/conv.
- ``"auto"`` (default): packed for few rows (small batches, where it beats expanding the bits), unpacked for
  many (where the dense kernels win); see :meth:`_PackedWeights.use_packed` and ``docs/binary.md``.

Both paths compute the same products (equal up to float summation order).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from slimtorch.io.manifest import register_module
from slimtorch.layer_kinds import pad_same
from slimtorch.quant.binary.kernels import byte_table, lut_index, lut_matmul, xnor_matmul
from slimtorch.quant.binary.math import binary_scale, sign, ternary_codes, ternary_scale
from slimtorch.quant.binary.pack import pack_bits, pack_signs, pack_ternary, packed_length, popcount8

Kernel = Literal["auto", "packed", "unpacked"]


def _pair(v: Any) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


class _PackedWeights(nn.Module):
    """State and products shared by the packed Linear and Conv2d. Not registered; subclasses are."""

    max_packed_rows = 16

    def _init_packed(self, out_features: int, row_length: int, in_channels: int, bias: bool, ternary: bool,
                     activations: bool) -> None:
        if ternary and activations:
            raise ValueError("binary activations are supported with binary weights only, not ternary")
        self.ternary, self.activations, self.row_length = bool(ternary), bool(activations), int(row_length)
        self.kernel: Kernel = "auto"
        shape = (int(out_features), packed_length(row_length))
        if self.ternary:
            self.register_buffer("nonzero", torch.zeros(shape, dtype=torch.uint8))
            self.register_buffer("negative", torch.zeros(shape, dtype=torch.uint8))
        else:
            self.register_buffer("signs", torch.zeros(shape, dtype=torch.uint8))
        self.register_buffer("scale", torch.ones(int(out_features)))
        self.register_buffer("bias", torch.zeros(int(out_features)) if bias else None)
        self.register_buffer("input_shift", torch.zeros(int(in_channels)) if activations else None)
        self._cache: dict[str, tuple[Any, torch.Tensor]] = {}

    def _fill(self, weight: torch.Tensor, bias: torch.Tensor | None, threshold: float,
              input_shift: torch.Tensor | None) -> None:
        rows = weight.detach().float().reshape(weight.shape[0], -1)  # (out, in * kh * kw)
        with torch.no_grad():
            if self.ternary:
                codes = ternary_codes(rows, threshold)
                self.nonzero.copy_(pack_ternary(codes)[0])
                self.negative.copy_(pack_ternary(codes)[1])
                self.scale.copy_(ternary_scale(rows, codes))
            else:
                self.signs.copy_(pack_signs(rows))
                self.scale.copy_(binary_scale(rows))
            if self.bias is not None:
                self.bias.copy_(bias.detach().float())
            if self.input_shift is not None and input_shift is not None:
                self.input_shift.copy_(input_shift.detach().float())

    def weight_counts(self) -> tuple[int, int]:
        """``(parameters, non-zero parameters)``: the logical weights plus the bias, for ``slimtorch.measure``."""
        weights = self.scale.numel() * self.row_length
        nonzero = int(popcount8(self.nonzero).sum()) if self.ternary else weights
        bias = (self.bias.numel(), int(torch.count_nonzero(self.bias))) if self.bias is not None else (0, 0)
        return weights + bias[0], nonzero + bias[1]

    def codes(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The ``(out, row_length)`` weight codes expanded: +1/-1 (binary) or -1/0/+1 (ternary), unscaled."""
        # one gather per byte from a (256, 8) table of its bits: far fewer passes than shifting bit by bit
        def expand(packed: torch.Tensor, signed: bool) -> torch.Tensor:
            bits = byte_table(signed, dtype, packed.device).t()[packed.long()]  # (out, bytes, 8)
            return bits.reshape(packed.shape[0], -1)[:, :self.row_length]

        if self.ternary:
            return expand(self.nonzero, False) * (1 - 2 * expand(self.negative, False))
        return expand(self.signs, True)

    def dequantized_weight(self) -> torch.Tensor:
        """``scale * codes`` as a float ``(out, row_length)`` matrix (for checks and export, not for inference)."""
        return self.codes() * self.scale.unsqueeze(1)

    def _cached(self, name: str, source: torch.Tensor, build) -> torch.Tensor:
        # gather indices derived from a packed buffer; rebuilt when the buffer is replaced or changed in place
        key = (source.data_ptr(), source._version, source.device)
        hit = self._cache.get(name)
        if hit is None or hit[0] != key:
            hit = (key, build(source))
            self._cache[name] = hit
        return hit[1]

    def use_packed(self, rows: int) -> bool:
        """Whether a call with ``rows`` input rows runs on the packed bits (see ``kernel``).

        ``"auto"`` follows a work model fitted to ``benchmarks/bench_binary_speed.py``: expanding the bits costs
        about ``out * K`` per call whatever the rows; the tables cost about ``rows * K * (32 + out / 8)``, and
        XNOR-popcount makes several passes over ``rows * out * K / 8`` bytes (break-even near 8 rows).
        """
        if self.kernel != "auto":
            return self.kernel == "packed"
        if self.activations:
            return rows <= self.max_packed_rows // 2
        out = self.scale.numel()
        return rows <= self.max_packed_rows and rows * (32 + out / 8) <= 2 * out

    def packed_product(self, x: torch.Tensor, padded: bool = False) -> torch.Tensor:
        """``(R, K) -> (R, out)`` unscaled products on the packed bits.

        Real inputs use lookup tables; binary inputs (values +1/-1, and 0 for zero padding when ``padded``)
        use XNOR-popcount.
        """
        if self.activations:
            valid = pack_bits(x != 0) if padded else None
            dots = xnor_matmul(pack_bits(x > 0), self.signs, self.row_length, valid)
            return dots.to(x.dtype)
        if self.ternary:
            unsigned = byte_table(False, x.dtype, x.device)
            nz = self._cached("nonzero", self.nonzero, lut_index)
            neg = self._cached("negative", self.negative, lut_index)
            return lut_matmul(x, nz, unsigned) - 2 * lut_matmul(x, neg, unsigned)
        return lut_matmul(x, self._cached("signs", self.signs, lut_index), byte_table(True, x.dtype, x.device))

    def _binarize_input(self, x: torch.Tensor) -> torch.Tensor:
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return sign(x - self.input_shift.reshape(shape).to(x.dtype))

    def _finish(self, y: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
        y = y * self.scale.reshape(shape).to(y.dtype)
        return y if self.bias is None else y + self.bias.reshape(shape).to(y.dtype)


@register_module
class BinaryLinear(_PackedWeights):
    """A Linear layer with packed binary (1 bit) or ternary (2 bits) weights and a per-output scale.

    ``y = scale * (x @ codes^T) + bias``; with ``activations=True``, ``x`` is first replaced by
    ``sign(x - input_shift)`` (a fully binary layer).

    Example:
        >>> layer = BinaryLinear.from_float(torch.nn.Linear(100, 10))
        >>> layer(torch.randn(4, 100)).shape
        torch.Size([4, 10])
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, ternary: bool = False,
                 activations: bool = False) -> None:
        super().__init__()
        self.in_features, self.out_features = int(in_features), int(out_features)
        self._init_packed(out_features, in_features, in_features, bias, ternary, activations)

    @classmethod
    def from_float(cls, linear: nn.Linear, *, ternary: bool = False, activations: bool = False,
                   threshold: float = 0.7, input_shift: torch.Tensor | None = None) -> BinaryLinear:
        """Pack a float ``nn.Linear``: binary (XNOR-Net scale) or ternary (TWN ``threshold`` x mean |w|)."""
        layer = cls(linear.in_features, linear.out_features, linear.bias is not None, ternary, activations)
        layer._fill(linear.weight, linear.bias, threshold, input_shift)
        return layer.to(linear.weight.device)

    def manifest_args(self) -> dict[str, Any]:
        """Constructor arguments for ``slimtorch.save``."""
        return {"in_features": self.in_features, "out_features": self.out_features, "bias": self.bias is not None,
                "ternary": self.ternary, "activations": self.activations}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        rows = x.reshape(-1, self.in_features)  # (R, in)
        if self.activations:
            rows = self._binarize_input(rows)
        if self.use_packed(rows.shape[0]):
            y = self.packed_product(rows)
        else:
            y = F.linear(rows, self.codes(rows.dtype))
        return self._finish(y, (1, -1)).reshape(*lead, self.out_features)


@register_module
class BinaryConv2d(_PackedWeights):
    """A Conv2d (groups=1, zero padding) with packed binary or ternary weights and a per-output scale.

    The packed path unfolds the input (im2col) and multiplies on the bits; with binary activations a packed
    validity mask keeps the zero padding exact. ``same_pad`` (set when it replaced a TensorFlow-"same" padded
    convolution): the (binarized) input is first padded with zeros as :func:`slimtorch.layer_kinds.pad_same` does.
    """

    same_pad = False

    def __init__(self, in_channels: int, out_channels: int, kernel_size: Any, stride: Any = 1, padding: Any = 0,
                 dilation: Any = 1, bias: bool = True, ternary: bool = False, activations: bool = False) -> None:
        super().__init__()
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.kernel_size, self.stride, self.dilation = _pair(kernel_size), _pair(stride), _pair(dilation)
        self.padding = _pair(padding)
        row = self.in_channels * self.kernel_size[0] * self.kernel_size[1]
        self._init_packed(out_channels, row, in_channels, bias, ternary, activations)
        self.same_pad = False  # an instance attribute too: slimtorch.load sets the recorded value

    @classmethod
    def from_float(cls, conv: nn.Conv2d, *, ternary: bool = False, activations: bool = False,
                   threshold: float = 0.7, input_shift: torch.Tensor | None = None) -> BinaryConv2d:
        """Pack a float ``nn.Conv2d`` (groups=1, numeric zero padding) as binary or ternary."""
        if conv.groups != 1 or conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise ValueError("BinaryConv2d needs groups=1, padding_mode='zeros' and numeric padding")
        layer = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                    conv.dilation, conv.bias is not None, ternary, activations)
        layer._fill(conv.weight, conv.bias, threshold, input_shift)
        return layer.to(conv.weight.device)

    def manifest_args(self) -> dict[str, Any]:
        """Constructor arguments for ``slimtorch.save``."""
        return {"in_channels": self.in_channels, "out_channels": self.out_channels,
                "kernel_size": list(self.kernel_size), "stride": list(self.stride), "padding": list(self.padding),
                "dilation": list(self.dilation), "bias": self.bias is not None, "ternary": self.ternary,
                "activations": self.activations}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 3:  # unbatched (C, H, W), as nn.Conv2d accepts it
            return self.forward(x.unsqueeze(0)).squeeze(0)
        if self.activations:
            x = self._binarize_input(x)
        if self.same_pad:
            x = pad_same(x, self.kernel_size, self.stride, self.dilation)
        batch, _, height, width = x.shape
        kh, kw = self.kernel_size
        out_h = (height + 2 * self.padding[0] - self.dilation[0] * (kh - 1) - 1) // self.stride[0] + 1
        out_w = (width + 2 * self.padding[1] - self.dilation[1] * (kw - 1) - 1) // self.stride[1] + 1
        if not self.use_packed(batch * out_h * out_w):
            weight = self.codes(x.dtype).reshape(self.out_channels, self.in_channels, kh, kw)
            y = F.conv2d(x, weight, None, self.stride, self.padding, self.dilation)
            return self._finish(y, (1, -1, 1, 1))
        cols = F.unfold(x, self.kernel_size, self.dilation, self.padding, self.stride)  # (B, C*kh*kw, L)
        rows = cols.transpose(1, 2).reshape(-1, self.row_length)  # (B*L, C*kh*kw)
        y = self.packed_product(rows, padded=any(self.padding) or self.same_pad)  # (B*L, out)
        y = y.reshape(batch, out_h * out_w, self.out_channels).transpose(1, 2)  # (B, out, L)
        return self._finish(y.reshape(batch, self.out_channels, out_h, out_w), (1, -1, 1, 1))
