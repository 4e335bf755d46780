"""Export-only twins of slimtorch's compressed layers: the same numbers, written with ops ONNX has.

The compressed layers run on PyTorch's CPU kernels (oneDNN int8, ``_int_mm``, int4 pack-mm, CSR, bit tables),
which have no ONNX form. :func:`export_twins` swaps each for a twin that holds the same integers in the dtypes
ONNX wants and calls an op of :mod:`slimtorch.onnx.ops`, then puts the originals back. Plain layers
(float, structurally pruned, low-rank, unstructured zeros) need no twin. A convolution twin keeps its layer's
``same_pad`` (TensorFlow-"same" padding, exported as a Pad before the convolution).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

import slimtorch.onnx.ops  # noqa: F401  (registers the torch.ops.slimtorch_export ops)
from slimtorch.data import iter_inputs, run_hooked
from slimtorch.errors import DataError
from slimtorch.layer_kinds import pad_same
from slimtorch.prune.sparse_linear import SparseLinear
from slimtorch.quant.binary.modules import BinaryConv2d, BinaryLinear
from slimtorch.quant.formats import DynamicQuantLinear, QuantConv2d, StaticQuantLinear, WeightOnlyQuantLinear
from slimtorch.quant.kernels import activation_bits
from slimtorch.quant.packing import pack_int4
from slimtorch.quant.qparams import choose_qparams, int32_bias, whole_groups

#: block sizes ONNX Runtime's MatMulNBits accepts (a power of two, at least 16)
NBITS_BLOCKS = (16, 32, 64, 128, 256, 512, 1024, 2048)

ops = torch.ops.slimtorch_export


def _static_buffers(twin: nn.Module, layer: StaticQuantLinear | QuantConv2d,
                    output_qparams: tuple[torch.Tensor, torch.Tensor] | None) -> None:
    """int8 weight with int8 zero points, uint8 input zero point, bias as int32 on the scale x_scale * w_scale
    (the form ONNX Runtime's QDQ fusion expects; the bias rounding error is below half of that scale)."""
    twin.register_buffer("qweight", layer.qweight.detach().to(torch.int8).clone())
    twin.register_buffer("w_scale", layer.weight_scale.detach().float().clone())
    twin.register_buffer("w_zp", torch.zeros_like(layer.weight_scale, dtype=torch.int8))
    twin.register_buffer("x_scale", layer.input_scale.detach().float().reshape(()).clone())
    twin.register_buffer("x_zp", layer.input_zero_point.detach().reshape(()).to(torch.uint8).clone())
    # 7-bit input codes (calibrated where uint8 x int8 products saturate): QuantizeLinear only caps at 255, so the
    # input is first capped at the value of code 127, as the layer's kernel caps it
    twin.x_max = (None if layer.input_bits >= 8 else
                  float((2**layer.input_bits - 1 - layer.input_zero_point.float()) * layer.input_scale.float()))
    twin.register_buffer("y_scale", None if output_qparams is None else output_qparams[0].float().reshape(()))
    twin.register_buffer("y_zp", None if output_qparams is None else output_qparams[1].to(torch.uint8).reshape(()))
    if layer.bias is None:
        twin.bias_q = twin.bias_scale = None
        return
    bias_scale = twin.x_scale * twin.w_scale
    twin.register_buffer("bias_q", int32_bias(layer.bias.detach(), bias_scale).to(torch.int32))
    twin.register_buffer("bias_scale", bias_scale)


class QDQLinear(nn.Module):
    """Static int8 Linear as QuantizeLinear/DequantizeLinear + Gemm."""

    def __init__(self, layer: StaticQuantLinear,
                 output_qparams: tuple[torch.Tensor, torch.Tensor] | None = None) -> None:
        super().__init__()
        self.in_features, self.out_features, self.relu = layer.in_features, layer.out_features, layer.relu
        _static_buffers(self, layer, output_qparams)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.x_max is not None:
            x = x.clamp(max=self.x_max)
        y = ops.qdq_linear(x.reshape(-1, self.in_features), self.qweight, self.w_scale, self.w_zp, self.x_scale,
                           self.x_zp, self.bias_q, self.bias_scale, self.relu, self.y_scale, self.y_zp)
        return y.reshape(*x.shape[:-1], self.out_features)


class QDQConv2d(nn.Module):
    """Static int8 Conv2d as QuantizeLinear/DequantizeLinear + Conv."""

    def __init__(self, layer: QuantConv2d, output_qparams: tuple[torch.Tensor, torch.Tensor] | None = None) -> None:
        super().__init__()
        self.stride, self.padding, self.dilation = list(layer.stride), list(layer.padding), list(layer.dilation)
        self.kernel_size, self.same_pad = list(layer.kernel_size), layer.same_pad
        self.groups, self.relu = layer.groups, layer.relu
        _static_buffers(self, layer, output_qparams)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.x_max is not None:
            x = x.clamp(max=self.x_max)
        if self.same_pad:
            x = pad_same(x, self.kernel_size, self.stride, self.dilation)
        return ops.qdq_conv2d(x, self.qweight, self.w_scale, self.w_zp, self.x_scale, self.x_zp, self.bias_q,
                              self.bias_scale, self.stride, self.padding, self.dilation, self.groups, self.relu,
                              self.y_scale, self.y_zp)


class DynamicLinear(nn.Module):
    """Dynamic int8 Linear as an in-graph activation quantization + MatMulInteger (per tensor: as many
    activation levels as the layer uses on the exporting CPU, see quant/kernels.py)."""

    def __init__(self, layer: DynamicQuantLinear) -> None:
        super().__init__()
        self.in_features, self.out_features, self.per_token = layer.in_features, layer.out_features, layer.per_token
        self.act_qmax = 2 ** activation_bits() - 1
        self.register_buffer("qweight_t", layer.int_weight().detach().t().contiguous())  # [in, out]
        self.register_buffer("w_scale", layer.weight_scale.detach().float().clone())
        self.register_buffer("w_zp", torch.zeros_like(layer.weight_scale, dtype=torch.int8))
        self.register_buffer("bias", None if layer.bias is None else layer.bias.detach().float().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = ops.dynamic_linear(x.reshape(-1, self.in_features), self.qweight_t, self.w_scale, self.w_zp, self.bias,
                               self.per_token, self.act_qmax)
        return y.reshape(*x.shape[:-1], self.out_features)


class NBitsLinear(nn.Module):
    """4-bit weight-only Linear as ONNX Runtime's MatMulNBits (the packed bytes are reused as they are where the
    block size divides the input width; MatMulNBits takes a short last block as a full one holding zeros)."""

    def __init__(self, layer: WeightOnlyQuantLinear) -> None:
        super().__init__()
        self.in_features, self.out_features, self.block = layer.in_features, layer.out_features, layer.group_size
        short = self.in_features % self.block  # a short last block is filled with zero codes
        packed = pack_int4(whole_groups(layer.int_weight().detach(), self.block)) if short else layer.qweight.detach()
        self.register_buffer("blocks", packed.reshape(self.out_features, -1, self.block // 2).clone())
        self.register_buffer("scales", layer.weight_scale.detach().float().reshape(-1).clone())  # [N * blocks]
        self.register_buffer("bias", None if layer.bias is None else layer.bias.detach().float().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ops.matmul_nbits(x, self.blocks, self.scales, self.bias, self.in_features, self.out_features,
                                self.block)


class DequantLinear(nn.Module):
    """Any other integer-weight Linear: int8 codes dequantized in the graph, float Gemm."""

    def __init__(self, layer: WeightOnlyQuantLinear) -> None:
        super().__init__()
        self.in_features, self.out_features, self.group_size = layer.in_features, layer.out_features, layer.group_size
        # whole groups: a short last one is filled with zero codes
        self.register_buffer("qweight", whole_groups(layer.int_weight().detach(), self.group_size).clone())
        self.register_buffer("w_scale", layer.weight_scale.detach().float().clone())
        self.register_buffer("bias", None if layer.bias is None else layer.bias.detach().float().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = ops.dequant_linear(x.reshape(-1, self.in_features), self.qweight, self.w_scale, self.bias,
                               self.group_size)
        return y.reshape(*x.shape[:-1], self.out_features)


class FloatBinary(nn.Module):
    """Binary/ternary layer as its float product (ONNX has no 1- or 2-bit type): ``scale * codes`` weights,
    and ``sign(x - shift)`` inputs for fully binary layers."""

    def __init__(self, layer: BinaryLinear | BinaryConv2d) -> None:
        super().__init__()
        self.layer_ref = [layer]  # a list keeps the original out of this module's children
        weight = layer.dequantized_weight().detach()
        if isinstance(layer, BinaryConv2d):
            weight = weight.reshape(layer.out_channels, layer.in_channels, *layer.kernel_size)
            self.conv = dict(stride=layer.stride, padding=layer.padding, dilation=layer.dilation)
            self.same_pad = layer.same_pad
        else:
            self.conv, self.same_pad = None, False
        self.register_buffer("weight", weight)
        self.register_buffer("bias", None if layer.bias is None else layer.bias.detach().float().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        layer = self.layer_ref[0]
        if layer.activations:
            x = layer._binarize_input(x)
        if self.conv is None:
            return F.linear(x, self.weight, self.bias)
        if self.same_pad:
            x = pad_same(x, self.weight.shape[2:], self.conv["stride"], self.conv["dilation"])
        return F.conv2d(x, self.weight, self.bias, **self.conv)


def dense_linear(layer: SparseLinear) -> nn.Linear:
    """A SparseLinear as the plain Linear it equals (its zeros stay zeros in the file)."""
    out = nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None)
    with torch.no_grad():
        out.weight.copy_(layer.dense_weight())
        if layer.bias is not None:
            out.bias.copy_(layer.bias)
    return out


def twin_for(module: nn.Module, output_qparams: tuple[torch.Tensor, torch.Tensor] | None = None) -> nn.Module | None:
    """The export twin of ``module``, or None where the module exports as it is.

    Args:
        module: a layer.
        output_qparams: for a static int8 layer, ``(scale, zero_point)`` to quantize its output with (uint8).
    """
    if isinstance(module, QuantConv2d):
        return QDQConv2d(module, output_qparams)
    if isinstance(module, StaticQuantLinear):
        return QDQLinear(module, output_qparams)
    if isinstance(module, DynamicQuantLinear):
        return DynamicLinear(module)
    if isinstance(module, WeightOnlyQuantLinear):
        if module.bits == 4 and module.group_size in NBITS_BLOCKS:
            return NBitsLinear(module)
        return DequantLinear(module)
    if isinstance(module, SparseLinear):
        return dense_linear(module)
    if isinstance(module, BinaryLinear | BinaryConv2d):
        return FloatBinary(module)
    return None


def calibrate_outputs(model: nn.Module, data: Any, num_batches: int = 8) -> dict[str, tuple[torch.Tensor, ...]]:
    """uint8 ``(scale, zero_point)`` of the output range of every static int8 layer, seen on ``data`` (none: ``{}``).

    Raises:
        DataError: ``data`` yields no batch.
    """
    names = [n for n, m in model.named_modules() if isinstance(m, QuantConv2d | StaticQuantLinear)]
    if not names:
        return {}
    lo: dict[str, torch.Tensor] = {}
    hi: dict[str, torch.Tensor] = {}

    def observe(name: str, out: torch.Tensor) -> None:
        a, b = torch.aminmax(out.detach().float())
        lo[name] = torch.minimum(lo.get(name, a), a)
        hi[name] = torch.maximum(hi.get(name, b), b)

    was_training = model.training
    try:
        split = "calibration" if hasattr(data, "calibration") else "train"
        seen = run_hooked(model.eval(), iter_inputs(data, num_batches, split=split),
                          post={model.get_submodule(n): (lambda _m, _a, out, n=n: observe(n, out)) for n in names})
    finally:
        model.train(was_training)
    if not seen:
        raise DataError("calibration data for the int8 outputs yielded no batch; pass a loader or a list of batches")
    return {n: choose_qparams(lo[n], hi[n], bits=8, symmetric=False, signed=False) for n in names if n in lo}


@contextlib.contextmanager
def export_twins(model: nn.Module, output_qparams: dict[str, tuple[torch.Tensor, ...]] | None = None
                 ) -> Iterator[tuple[nn.Module, dict[str, str]]]:
    """Within the block, every compressed layer of ``model`` is replaced by its export twin (in eval mode);
    afterwards the originals and the training flag are restored, even on error.

    Args:
        model: the model.
        output_qparams: layer name -> output ``(scale, zero_point)`` for static int8 layers (see
            :func:`calibrate_outputs`); those layers' outputs are quantized in the export.

    Yields:
        ``(module to export, {layer name: twin class name})``; the module is ``model`` itself unless ``model``
        is one compressed layer, whose twin is then exported.
    """
    was_training = model.training
    swapped: list[tuple[str, nn.Module]] = []
    qparams = output_qparams or {}
    top = twin_for(model, qparams.get(""))
    try:
        if top is None:
            for name, module in list(model.named_modules()):
                if not name or any(name.startswith(done + ".") for done, _ in swapped):
                    continue
                twin = twin_for(module, qparams.get(name))
                if twin is not None:
                    model.set_submodule(name, twin)
                    swapped.append((name, module))
        model.eval()
        names = {name: type(model.get_submodule(name)).__name__ for name, _ in swapped}
        yield (model, names) if top is None else (top.eval(), {"": type(top).__name__})
    finally:
        for name, module in reversed(swapped):
            model.set_submodule(name, module)
        model.train(was_training)
