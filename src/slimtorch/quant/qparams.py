"""Quantization arithmetic as pure functions on tensors: ranges, scales, zero points, quantize, dequantize.

Granularity is given by ``axis`` and ``group_size``:
- per tensor: ``axis=None`` (scale and zero point are 0-d tensors);
- per channel: ``axis=k`` (one scale per index of dimension k; shape ``[x.shape[k]]``);
- per group: ``axis=0, group_size=g`` on a 2-D weight ``[out, in]`` (one scale per output row and per run of
  g input columns; shape ``[out, ceil(in / g)]``), the layout weight-only kernels expect. Where g does not
  divide ``in``, the last group is shorter (``in % g`` columns): its range is that of its own columns.

Rounding is round-half-to-even (``torch.round``), values are clamped to the integer range, and the zero
point is always an integer inside that range, so 0.0 is represented exactly.
"""

from __future__ import annotations

import torch

from slimtorch.errors import ConfigError


def qrange(bits: int, signed: bool) -> tuple[int, int]:
    """Integer range ``(qmin, qmax)`` of a ``bits``-wide integer: int8 -> (-128, 127), uint4 -> (0, 15).

    Raises:
        ConfigError: bits outside 1..8.
    """
    if not isinstance(bits, int) or not 1 <= bits <= 8:
        raise ConfigError(f"bits={bits!r} is not supported; allowed: an integer from 1 to 8")
    if signed:
        return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return 0, 2**bits - 1


def choose_qparams(
    min_val: torch.Tensor,
    max_val: torch.Tensor,
    *,
    bits: int = 8,
    symmetric: bool = True,
    signed: bool = True,
    eps: float = 1e-12,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero point mapping ``[min_val, max_val]`` (extended to include 0) onto the integer range.

    Symmetric: ``scale = max(|min|, |max|) / ((qmax - qmin) // 2)`` (127 for int8, 7 for int4, so the
    range maps inside the integers without clipping) and the zero point is the middle of the range (0 for
    signed types, 128 for uint8). Asymmetric (affine): ``scale = (max - min) / (qmax - qmin)``
    and ``zero_point = qmin - round(min / scale)``, clamped into range.

    Returns:
        ``(scale, zero_point)``: float32 and int32 tensors of the shape of ``min_val``.
    """
    qmin, qmax = qrange(bits, signed)
    min_val = torch.clamp(min_val.float(), max=0.0)
    max_val = torch.clamp(max_val.float(), min=0.0)
    if symmetric:
        bound = torch.maximum(-min_val, max_val)
        scale = torch.clamp(bound / ((qmax - qmin) // 2), min=eps)
        mid = (qmin + qmax + 1) // 2
        zero_point = torch.full_like(scale, mid, dtype=torch.int32)
    else:
        scale = torch.clamp((max_val - min_val) / (qmax - qmin), min=eps)
        zero_point = torch.clamp(qmin - torch.round(min_val / scale), qmin, qmax).to(torch.int32)
    return scale, zero_point


def _broadcast(p: torch.Tensor, x: torch.Tensor, axis: int | None, group_size: int | None) -> torch.Tensor:
    """Shape a per-channel/per-group parameter so it broadcasts against ``x`` (grouped: against x viewed
    as ``[out, in // g, g]``)."""
    if axis is None or p.dim() == 0:
        return p
    if group_size is not None:
        return p.unsqueeze(-1)  # [out, in // g, 1]
    shape = [1] * x.dim()
    shape[axis] = -1
    return p.reshape(shape)


def _grouped(x: torch.Tensor, group_size: int | None) -> torch.Tensor:
    """A 2-D ``x`` [out, in] as ``[out, ceil(in / g), g]``. A short last group is filled up by repeating its last
    column, which leaves its min and max unchanged; :func:`_ungrouped` cuts the fill off again."""
    if group_size is None:
        return x
    if x.dim() != 2:
        raise ConfigError(f"group_size={group_size} applies to a 2-D weight [out, in], not shape {tuple(x.shape)}")
    fill = -x.shape[1] % group_size
    if fill:
        x = torch.cat([x, x[:, -1:].expand(-1, fill)], dim=1)
    return x.reshape(x.shape[0], -1, group_size)


def whole_groups(x: torch.Tensor, group_size: int | None) -> torch.Tensor:
    """``x`` with its last dimension filled with zeros up to a multiple of ``group_size`` (itself where it is
    one, or without groups): the layout of kernels and ONNX operators that take whole groups only."""
    fill = -x.shape[-1] % group_size if group_size else 0
    return torch.nn.functional.pad(x, (0, fill)) if fill else x


def int32_bias(bias: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
    """The integers (as float32) nearest ``bias / step``, clamped to the int32 range: an int8 layer's bias as
    int8 runtimes hold it, on the grid ``step = input_scale * weight_scale``."""
    limit = float(2**31 - 1)
    return torch.round(bias.float() / step).clamp(-limit, limit)


def _ungrouped(xg: torch.Tensor, shape: torch.Size, group_size: int | None) -> torch.Tensor:
    """Inverse of :func:`_grouped`: back to ``shape``, without the fill of a short last group."""
    if group_size is None:
        return xg.reshape(shape)
    return xg.reshape(shape[0], -1)[:, : shape[1]].contiguous()


def quantize(
    x: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor,
    *,
    bits: int = 8,
    signed: bool = True,
    axis: int | None = None,
    group_size: int | None = None,
) -> torch.Tensor:
    """``clamp(round(x / scale) + zero_point, qmin, qmax)`` as int8 (signed) or uint8 (unsigned), x's shape."""
    qmin, qmax = qrange(bits, signed)
    xg = _grouped(x.float(), group_size)
    s = _broadcast(scale, xg, axis, group_size)
    z = _broadcast(zero_point, xg, axis, group_size)
    q = torch.clamp(torch.round(xg / s) + z, qmin, qmax)
    return _ungrouped(q, x.shape, group_size).to(torch.int8 if signed else torch.uint8)


def dequantize(
    q: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor,
    *,
    axis: int | None = None,
    group_size: int | None = None,
) -> torch.Tensor:
    """``(q - zero_point) * scale`` as float32, q's shape."""
    qg = _grouped(q.float(), group_size)
    s = _broadcast(scale, qg, axis, group_size)
    z = _broadcast(zero_point, qg, axis, group_size)
    return _ungrouped((qg - z) * s, q.shape, group_size)


def minmax(
    x: torch.Tensor, axis: int | None = None, group_size: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Min and max of ``x`` per tensor (``axis=None``), per index of ``axis``, or per group of a 2-D weight."""
    x = x.detach().float()
    if axis is None:
        return x.min(), x.max()
    if group_size is not None:
        xg = _grouped(x, group_size)
        return xg.amin(dim=-1), xg.amax(dim=-1)
    dims = [d for d in range(x.dim()) if d != axis % x.dim()]
    return x.amin(dim=dims), x.amax(dim=dims)


def fake_quantize(
    x: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor,
    *,
    bits: int = 8,
    signed: bool = True,
    axis: int | None = None,
    group_size: int | None = None,
) -> torch.Tensor:
    """``dequantize(quantize(x))``: the float values the integer format can represent nearest to ``x``."""
    q = quantize(x, scale, zero_point, bits=bits, signed=signed, axis=axis, group_size=group_size)
    return dequantize(q, scale, zero_point, axis=axis, group_size=group_size)
