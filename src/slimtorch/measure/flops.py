"""FLOPs and MACs of one forward pass, counted by ``torch.utils.flop_counter`` on a real forward."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, register_flop_formula

from slimtorch.data import call


def _prod(shape: Any) -> int:
    out = 1
    for d in shape:
        out *= int(d)
    return out


def _register_integer_kernels() -> None:
    """Teach the flop counter the integer kernels quantized layers call (2 operations per multiply-add)."""

    def qconv(qx, x_scale, x_zp, qw, *args, out_shape=None, **kwargs) -> int:
        return 2 * _prod(out_shape) * _prod(qw[1:])  # per output element: (in / groups) * kh * kw MACs

    def qlinear(qx, x_scale, x_zp, qw, *args, out_shape=None, **kwargs) -> int:
        return 2 * _prod(qx[:-1]) * qx[-1] * out_shape[-1]

    def matmul_like(x, w, *args, out_shape=None, **kwargs) -> int:
        return 2 * _prod(x[:-1]) * x[-1] * out_shape[-1]

    onednn = torch.ops.onednn
    for name, formula in (("qconv2d_pointwise", qconv), ("qlinear_pointwise", qlinear)):
        if hasattr(onednn, name):
            register_flop_formula(getattr(onednn, name))(formula)
    aten = torch.ops.aten
    for name in ("_int_mm", "_weight_int8pack_mm", "_weight_int4pack_mm_for_cpu"):
        if hasattr(aten, name):
            register_flop_formula(getattr(aten, name))(matmul_like)


_register_integer_kernels()


def count_flops(model: nn.Module, example_inputs: Any) -> int:
    """Return the floating-point (or integer) operations of one forward on ``example_inputs``.

    A multiply-add counts as 2 operations, as ``torch.utils.flop_counter`` counts them; integer kernels
    that slimtorch uses register their own formulas there, so quantized layers are counted too.
    """
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        call(model, example_inputs)
    return int(counter.get_total_flops())
