"""The operators of a lowered int8 graph (:mod:`slimtorch.quant.lower`): static int8 layers that take and give
plain uint8 tensors on a calibrated grid, on oneDNN.

A tensor between two int8 operators is a uint8 tensor (channels-last for images) whose codes ``q`` stand for
``(q - zero_point) * scale``; the grid travels in the graph as constants, never in the tensor. Every operator
here equals its float reference: the dequantized input through the layer's float reference, then quantized to
the output grid (round half to even, clamped to the output's codes).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from slimtorch.quant import kernels

_CL = torch.channels_last


def _input_codes(layer: torch.nn.Module, x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """``x`` as the uint8 codes of ``layer``'s input grid: quantized here when it comes as float (a float
    operator produced it), laid out as the kernel wants (channels-last for convolutions)."""
    _, x_scale, x_zero_point = layer.int8_kernel()
    if x.dtype == torch.uint8:
        return x.contiguous(memory_format=_CL) if channels_last else x
    if channels_last:
        x = x.contiguous(memory_format=_CL)
    q = kernels.quantize_uint8(x.float(), x_scale, x_zero_point)
    return q if layer.input_bits >= 8 else q.clamp_(max=2**layer.input_bits - 1)


def _output(out: torch.Tensor, qmax: int) -> torch.Tensor:
    """uint8 output codes capped at ``qmax`` (7-bit grids, where uint8 x int8 products saturate)."""
    return out.clamp_(max=qmax) if out.dtype == torch.uint8 and qmax < 255 else out


def conv(x: torch.Tensor, layer: torch.nn.Module, out_scale: float, out_zero_point: int, out_qmax: int,
         unary: str, scalars: list) -> torch.Tensor:
    """A static int8 convolution (``QuantConv2d``) on uint8 (or float) ``x`` [N, C, H, W].

    Args:
        out_scale: the output grid's scale; 0: float32 output.
        out_zero_point, out_qmax: the output grid's zero point and largest code.
        unary: the activation oneDNN applies before quantizing the output: ``"none"``, ``"relu"``,
            ``"hardtanh"`` (``scalars`` = [lo, hi]), ``"hardswish"`` or ``"swish"`` (SiLU).

    Returns:
        uint8 codes on the output grid, or float32 (channels-last either way).
    """
    if x.dim() == 3:  # unbatched (C, H, W)
        return conv(x.unsqueeze(0), layer, out_scale, out_zero_point, out_qmax, unary, scalars).squeeze(0)
    packed, x_scale, x_zero_point = layer.int8_kernel()
    qx = _input_codes(layer, x, channels_last=True)
    out = torch.ops.onednn.qconv2d_pointwise(
        qx, x_scale, x_zero_point, packed, layer.weight_scale, kernels.weight_zeros(layer.out_channels), layer.bias,
        layer.stride, layer.padding, layer.dilation, layer.groups, out_scale or 1.0, out_zero_point,
        torch.uint8 if out_scale else torch.float32, unary, scalars, "")
    return _output(out, out_qmax)


def conv_add(x: torch.Tensor, layer: torch.nn.Module, accum: torch.Tensor, accum_scale: float,
             accum_zero_point: int, out_scale: float, out_zero_point: int, out_qmax: int, relu: bool,
             keep_accum: bool) -> torch.Tensor:
    """``conv(x) + accum`` (then ReLU) in one oneDNN call, as a residual block ends: ``accum`` uint8 on its own
    grid and the result uint8 on the output grid, or (``out_scale`` 0) both float32 (``accum_scale`` 1).

    oneDNN adds into ``accum``'s memory: with ``keep_accum`` (the graph reads ``accum`` later) it works on a
    copy.
    """
    packed, x_scale, x_zero_point = layer.int8_kernel()
    qx = _input_codes(layer, x, channels_last=True)
    dense = accum.contiguous(memory_format=_CL)
    if keep_accum and dense.data_ptr() == accum.data_ptr():
        dense = dense.clone(memory_format=_CL)
    out = torch.ops.onednn.qconv2d_pointwise.binary(
        qx, x_scale, x_zero_point, packed, layer.weight_scale, kernels.weight_zeros(layer.out_channels), dense,
        layer.bias, layer.stride, layer.padding, layer.dilation, layer.groups, out_scale or 1.0, out_zero_point,
        torch.uint8 if out_scale else torch.float32, accum_scale, accum_zero_point, "sum", 1.0,
        "relu" if relu else "none", [], "")
    return _output(out, out_qmax)


def linear(x: torch.Tensor, layer: torch.nn.Module, out_scale: float, out_zero_point: int, out_qmax: int,
           unary: str, scalars: list) -> torch.Tensor:
    """A static int8 Linear layer (``StaticQuantLinear``) on uint8 (or float) ``x`` [..., in]; as :func:`conv`.

    Returns:
        uint8 codes on the output grid, or float32, [..., out].
    """
    packed, x_scale, x_zero_point = layer.int8_kernel()
    qx = _input_codes(layer, x, channels_last=False)
    rows = qx.reshape(-1, qx.shape[-1])  # [M, in]
    out = torch.ops.onednn.qlinear_pointwise(
        rows, x_scale, x_zero_point, packed, layer.weight_scale, kernels.weight_zeros(layer.out_features),
        layer.bias, out_scale or 1.0, out_zero_point, torch.uint8 if out_scale else torch.float32, unary, scalars, "")
    return _output(out, out_qmax).reshape(*qx.shape[:-1], layer.out_features)


def max_pool2d(x: torch.Tensor, kernel_size: Any, stride: Any = None, padding: Any = 0, dilation: Any = 1,
               ceil_mode: bool = False) -> torch.Tensor:
    """``F.max_pool2d`` on uint8 codes (layout kept) or on float ``x``.

    Plain uint8 max pooling is slow in PyTorch (and fails on large channels-last inputs); the codes are read as a
    quint8 tensor (no copy), pooled by the quantized kernel and read back as uint8 (no copy).
    """
    if x.dtype != torch.uint8:
        return F.max_pool2d(x, kernel_size, stride, padding, dilation, ceil_mode)
    pooled = F.max_pool2d(torch._make_per_tensor_quantized_tensor(x, 1.0, 0), kernel_size, stride, padding, dilation,
                          ceil_mode)
    return torch.empty(0, dtype=torch.uint8).set_(pooled.untyped_storage(), pooled.storage_offset(), pooled.size(),
                                                  pooled.stride())


def dequantize(q: torch.Tensor, scale: float, zero_point: int) -> torch.Tensor:
    """float32 values of uint8 codes ``q``: ``(q - zero_point) * scale``, layout kept."""
    return (q.float() - zero_point).mul_(scale)


#: name -> operator, the targets a lowered graph may call (``slimtorch.load`` rebuilds graphs from these only)
OPS = {f.__name__: f for f in (conv, conv_add, linear, max_pool2d, dequantize)}
