"""Export-only operators: integer layers as PyTorch custom ops, each with the ONNX nodes it becomes.

Each op has a float reference body (used while tracing and by tests) that computes what the ONNX nodes compute,
and a translation into ONNX for ``torch.onnx.export(..., custom_translation_table=TRANSLATIONS)``:

- ``qdq_linear`` / ``qdq_conv2d`` (static int8): ``QuantizeLinear -> DequantizeLinear`` on the activation,
  ``DequantizeLinear`` on the int8 per-channel weight and on the int32 bias, then ``Gemm`` / ``Conv`` (and
  ``Relu``). This is the standard QDQ pattern ONNX Runtime fuses into ``QGemm`` / ``QLinearConv``.
- ``dynamic_linear``: per tensor, ``DynamicQuantizeLinear -> MatMulInteger -> Cast -> Mul`` (ONNX Runtime fuses
  it into ``DynamicQuantizeMatMul``); per token (one symmetric int8 scale per row, as slimtorch computes it),
  the row scales are computed in the graph and the product is still ``MatMulInteger``.
- ``matmul_nbits``: ONNX Runtime's ``com.microsoft.MatMulNBits`` (4-bit weights in blocks along K, one float
  scale per block, zero point 8 implied) -- the same nibble layout ``quant/packing.py`` stores.
- ``dequant_linear``: any other integer weight (weight-only int8, int4 in blocks MatMulNBits cannot take):
  the weight dequantized in the graph, then a float ``Gemm``.

Only this module and ``io/onnx*.py`` know about ONNX.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from onnxscript import ir
from onnxscript import opset18 as op


def _fake_uint8(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor) -> torch.Tensor:
    zp = zero_point.float()
    return (torch.clamp(torch.round(x / scale) + zp, 0, 255) - zp) * scale


def _bias(bias_q: torch.Tensor | None, bias_scale: torch.Tensor | None) -> torch.Tensor | None:
    return None if bias_q is None else bias_q.float() * bias_scale


def _output(out: torch.Tensor, relu: bool, y_scale: torch.Tensor | None, y_zp: torch.Tensor | None) -> torch.Tensor:
    out = out.relu() if relu else out
    return out if y_scale is None else _fake_uint8(out, y_scale, y_zp)


@torch.library.custom_op("slimtorch_export::qdq_linear", mutates_args=())
def qdq_linear(x: torch.Tensor, qweight: torch.Tensor, w_scale: torch.Tensor, w_zp: torch.Tensor,
               x_scale: torch.Tensor, x_zp: torch.Tensor, bias_q: torch.Tensor | None,
               bias_scale: torch.Tensor | None, relu: bool, y_scale: torch.Tensor | None = None,
               y_zp: torch.Tensor | None = None) -> torch.Tensor:
    """Static int8 linear on 2-D ``x`` [M, in]: uint8 activation, int8 weight [out, in] per channel; with
    ``y_scale``/``y_zp`` the output is quantized to uint8 too."""
    out = F.linear(_fake_uint8(x, x_scale, x_zp), qweight.float() * w_scale[:, None], _bias(bias_q, bias_scale))
    return _output(out, relu, y_scale, y_zp)


@qdq_linear.register_fake
def _(x, qweight, w_scale, w_zp, x_scale, x_zp, bias_q, bias_scale, relu, y_scale=None, y_zp=None):
    return x.new_empty(x.shape[0], qweight.shape[0])


@torch.library.custom_op("slimtorch_export::qdq_conv2d", mutates_args=())
def qdq_conv2d(x: torch.Tensor, qweight: torch.Tensor, w_scale: torch.Tensor, w_zp: torch.Tensor,
               x_scale: torch.Tensor, x_zp: torch.Tensor, bias_q: torch.Tensor | None,
               bias_scale: torch.Tensor | None, stride: list[int], padding: list[int], dilation: list[int],
               groups: int, relu: bool, y_scale: torch.Tensor | None = None,
               y_zp: torch.Tensor | None = None) -> torch.Tensor:
    """Static int8 conv: uint8 activation, int8 weight [out, in / groups, kh, kw] per output channel; with
    ``y_scale``/``y_zp`` the output is quantized to uint8 too."""
    w = qweight.float() * w_scale[:, None, None, None]
    out = F.conv2d(_fake_uint8(x, x_scale, x_zp), w, _bias(bias_q, bias_scale), stride, padding, dilation, groups)
    return _output(out, relu, y_scale, y_zp)


@qdq_conv2d.register_fake
def _(x, qweight, w_scale, w_zp, x_scale, x_zp, bias_q, bias_scale, stride, padding, dilation, groups, relu,
      y_scale=None, y_zp=None):
    kh, kw = qweight.shape[2:]
    h = (x.shape[2] + 2 * padding[0] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    w = (x.shape[3] + 2 * padding[1] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    return x.new_empty(x.shape[0], qweight.shape[0], h, w)


@torch.library.custom_op("slimtorch_export::dynamic_linear", mutates_args=())
def dynamic_linear(x: torch.Tensor, qweight_t: torch.Tensor, w_scale: torch.Tensor, w_zp: torch.Tensor,
                   bias: torch.Tensor | None, per_token: bool, act_qmax: int = 255) -> torch.Tensor:
    """Dynamic int8 linear on 2-D ``x`` [M, in]; ``qweight_t`` is the int8 weight transposed, [in, out]; per
    tensor, the activation codes run 0..``act_qmax`` (255, or 127 as on CPUs without VNNI)."""
    if per_token:  # the arithmetic of quant/kernels.py quantize_rows, operation for operation: same codes at ties
        amax = x.abs().amax(dim=1, keepdim=True).clamp(min=1e-12)
        xd = torch.clamp(torch.round(x * (127.0 / amax)), -127, 127) * (amax * (1.0 / 127.0))
    else:  # DynamicQuantizeLinear (255): uint8 over the range of x extended to 0
        lo, hi = x.min().clamp(max=0), x.max().clamp(min=0)
        scale = ((hi - lo) / act_qmax).clamp(min=1e-12)
        zp = torch.clamp(torch.round(-lo / scale), 0, act_qmax)
        xd = (torch.clamp(torch.round(x / scale) + zp, 0, act_qmax) - zp) * scale
    out = xd @ (qweight_t.float() * w_scale)
    return out if bias is None else out + bias


@dynamic_linear.register_fake
def _(x, qweight_t, w_scale, w_zp, bias, per_token, act_qmax=255):
    return x.new_empty(x.shape[0], qweight_t.shape[1])


@torch.library.custom_op("slimtorch_export::matmul_nbits", mutates_args=())
def matmul_nbits(x: torch.Tensor, blocks: torch.Tensor, scales: torch.Tensor, bias: torch.Tensor | None,
                 in_features: int, out_features: int, block_size: int) -> torch.Tensor:
    """4-bit weight-only linear on ``x`` [..., in]: ``blocks`` uint8 [out, ceil(in / block), block / 2] (low nibble
    first, code = value + 8; a short last block filled up), ``scales`` float [out * ceil(in / block)]."""
    p = blocks.to(torch.int16)
    codes = torch.stack([p & 0x0F, (p >> 4) & 0x0F], dim=-1).reshape(out_features, -1, block_size)  # [N, nb, bs]
    w = ((codes - 8).float() * scales.reshape(out_features, -1, 1)).reshape(out_features, -1)[:, :in_features]
    return F.linear(x, w, bias)


@matmul_nbits.register_fake
def _(x, blocks, scales, bias, in_features, out_features, block_size):
    return x.new_empty(*x.shape[:-1], out_features)


@torch.library.custom_op("slimtorch_export::dequant_linear", mutates_args=())
def dequant_linear(x: torch.Tensor, qweight: torch.Tensor, w_scale: torch.Tensor, bias: torch.Tensor | None,
                   group_size: int) -> torch.Tensor:
    """Weight-only linear on 2-D ``x`` [rows, in]: int8 codes [out, in] or, grouped, [out, ceil(in / group_size) *
    group_size] (a short last group filled with zero codes), scales [out] or [out, ceil(in / group_size)]."""
    out_f = qweight.shape[0]
    if group_size:
        w = (qweight.float().reshape(out_f, -1, group_size) * w_scale[:, :, None]).reshape(out_f, -1)[:, :x.shape[1]]
    else:
        w = qweight.float() * w_scale[:, None]
    return F.linear(x, w, bias)


@dequant_linear.register_fake
def _(x, qweight, w_scale, bias, group_size):
    return x.new_empty(x.shape[0], qweight.shape[0])


# ---- ONNX translations (traced by the exporter; arguments are graph values, attributes are Python values) ----

def _const(value: float | int, dtype: np.dtype) -> ir.Value:
    return op.Constant(value=ir.tensor(np.array(value, dtype=dtype)))


def _qdq_input(x, x_scale, x_zp):
    return op.DequantizeLinear(op.QuantizeLinear(x, x_scale, x_zp), x_scale, x_zp)


def _qdq_bias(bias_q, bias_scale):
    if bias_q is None:
        return None
    return op.DequantizeLinear(bias_q, bias_scale, axis=0)  # int32, zero point 0


def _qdq_output(out, relu: bool, y_scale, y_zp):
    out = op.Relu(out) if relu else out
    return out if y_scale is None else _qdq_input(out, y_scale, y_zp)


def qdq_linear_onnx(x, qweight, w_scale, w_zp, x_scale, x_zp, bias_q, bias_scale, relu: bool, y_scale=None,
                    y_zp=None):
    """QuantizeLinear/DequantizeLinear around a Gemm (ONNX Runtime: QGemm)."""
    w = op.DequantizeLinear(qweight, w_scale, w_zp, axis=0)
    b = _qdq_bias(bias_q, bias_scale)
    out = op.Gemm(_qdq_input(x, x_scale, x_zp), w, b, transB=1) if b is not None else op.Gemm(
        _qdq_input(x, x_scale, x_zp), w, transB=1)
    return _qdq_output(out, relu, y_scale, y_zp)


def qdq_conv2d_onnx(x, qweight, w_scale, w_zp, x_scale, x_zp, bias_q, bias_scale, stride, padding, dilation,
                    groups: int, relu: bool, y_scale=None, y_zp=None):
    """QuantizeLinear/DequantizeLinear around a Conv (ONNX Runtime: QLinearConv when the output is quantized)."""
    w = op.DequantizeLinear(qweight, w_scale, w_zp, axis=0)
    args = [_qdq_input(x, x_scale, x_zp), w]
    b = _qdq_bias(bias_q, bias_scale)
    if b is not None:
        args.append(b)
    out = op.Conv(*args, strides=list(stride), pads=list(padding) * 2, dilations=list(dilation), group=groups)
    return _qdq_output(out, relu, y_scale, y_zp)


def dynamic_linear_onnx(x, qweight_t, w_scale, w_zp, bias, per_token: bool, act_qmax: int = 255):
    """Dynamic int8: MatMulInteger on the activation quantized in the graph (per row, or per tensor: by
    DynamicQuantizeLinear for codes 0..255, spelled out for a narrower range)."""
    if per_token:  # as quant/kernels.py quantize_rows: codes round(x * (127 / amax)), scale amax * (1 / 127)
        amax = op.Max(op.ReduceMax(op.Abs(x), op.Constant(value_ints=[1]), keepdims=1), _const(1e-12, np.float32))
        scale = op.Mul(amax, _const(1.0 / 127.0, np.float32))
        xq = op.Cast(op.Clip(op.Round(op.Mul(x, op.Div(_const(127.0, np.float32), amax))),
                             _const(-127.0, np.float32), _const(127.0, np.float32)), to=ir.DataType.INT8)
        acc = op.MatMulInteger(xq, qweight_t, _const(0, np.int8), w_zp)
    elif act_qmax == 255:
        xq, scale, zp = op.DynamicQuantizeLinear(x)
        acc = op.MatMulInteger(xq, qweight_t, zp, w_zp)
    else:
        qmax = _const(float(act_qmax), np.float32)
        lo = op.Min(op.ReduceMin(x, keepdims=0), _const(0.0, np.float32))
        hi = op.Max(op.ReduceMax(x, keepdims=0), _const(0.0, np.float32))
        scale = op.Max(op.Div(op.Sub(hi, lo), qmax), _const(1e-12, np.float32))
        zp = op.Clip(op.Round(op.Div(op.Neg(lo), scale)), _const(0.0, np.float32), qmax)
        xq = op.Cast(op.Clip(op.Add(op.Round(op.Div(x, scale)), zp), _const(0.0, np.float32), qmax),
                     to=ir.DataType.UINT8)
        acc = op.MatMulInteger(xq, qweight_t, op.Cast(zp, to=ir.DataType.UINT8), w_zp)
    if per_token:  # row scales applied apart: ONNX Runtime's MatMulIntegerToFloat fusion mishandles [M, 1] ones
        out = op.Mul(op.Mul(op.Cast(acc, to=ir.DataType.FLOAT), w_scale), scale)
    else:
        out = op.Mul(op.Cast(acc, to=ir.DataType.FLOAT), op.Mul(scale, w_scale))
    return out if bias is None else op.Add(out, bias)


def _microsoft_op(op_type: str, *inputs: ir.Value, **attributes: int) -> ir.Value:
    """One node of ONNX Runtime's com.microsoft domain (version 1), recorded like the exporter's own nodes
    (onnxscript has no schema for these contrib ops, so its opset objects cannot build them)."""
    from onnxscript.ir import convenience
    from torch.onnx._internal.exporter import _core

    node = ir.Node("com.microsoft", op_type, inputs=list(inputs),
                   attributes=convenience.convert_attributes(attributes), num_outputs=1, version=1)
    _core.current_tracer.nodes.append(node)
    return node.outputs[0]


def matmul_nbits_onnx(x, blocks, scales, bias, in_features: int, out_features: int, block_size: int):
    """ONNX Runtime's 4-bit weight matmul (com.microsoft.MatMulNBits)."""
    out = _microsoft_op("MatMulNBits", x, blocks, scales, K=in_features, N=out_features, bits=4,
                        block_size=block_size)
    return out if bias is None else op.Add(out, bias)


def dequant_linear_onnx(x, qweight, w_scale, bias, group_size: int):
    """Integer weight dequantized in the graph (constant-folded by the runtime), then a float Gemm."""
    if group_size:
        w = op.Mul(op.Reshape(op.Cast(qweight, to=ir.DataType.FLOAT), op.Constant(value_ints=[0, -1, group_size])),
                   op.Unsqueeze(w_scale, op.Constant(value_ints=[2])))
        w = op.Slice(op.Reshape(w, op.Shape(qweight)), op.Constant(value_ints=[0]), op.Shape(x, start=-1),
                     op.Constant(value_ints=[1]))  # cut the fill of a short last group
    else:
        w = op.DequantizeLinear(qweight, w_scale, axis=0)
    return op.Gemm(x, w, bias, transB=1) if bias is not None else op.Gemm(x, w, transB=1)


TRANSLATIONS = {
    torch.ops.slimtorch_export.qdq_linear.default: qdq_linear_onnx,
    torch.ops.slimtorch_export.qdq_conv2d.default: qdq_conv2d_onnx,
    torch.ops.slimtorch_export.dynamic_linear.default: dynamic_linear_onnx,
    torch.ops.slimtorch_export.matmul_nbits.default: matmul_nbits_onnx,
    torch.ops.slimtorch_export.dequant_linear.default: dequant_linear_onnx,
}
