"""Integer kernels: thin calls into PyTorch's own operators, each equal to its dequantized float reference.

- ``qconv2d`` / ``qlinear_static``: oneDNN ``onednn.qconv2d_pointwise`` / ``onednn.qlinear_pointwise`` on a
  uint8 activation (per-tensor scale and zero point) and an int8 per-channel symmetric weight, float32 out,
  optional fused ReLU.
- ``int_mm_rows`` / ``onednn_rows``: activations quantized per row (token) at run time, then ``torch._int_mm``
  (int8 x int8 -> int32, exact) or oneDNN (the int8 rows shifted to uint8 with zero point 128 and scale 1, the
  row scales applied to the float output: the same numbers); the faster one per shape is kept.
  Per tensor (:func:`quantize_tensor`): one asymmetric uint8 scale per call, then oneDNN (:func:`qlinear_u8`).
- weight-only (in ``WeightOnlyQuantLinear``): ``aten._weight_int8pack_mm`` (int8) and
  ``aten._weight_int4pack_mm_for_cpu`` (int4) raced by :func:`fastest` against dequantize-then-matmul; the faster
  one per shape is kept.

Pre-packed weights are caches built on first use; the modules' state stays plain tensors.

x86 CPUs without VNNI (AVX2 only, or AVX-512 without VNNI: AMD Zen 2/3, Intel before Cascade Lake) multiply
uint8 by int8 with ``vpmaddubsw``, which adds pairs of products in int16 with saturation: there oneDNN's (and
ONNX Runtime's) u8 x s8 kernels are exact only for activation codes up to 127 (127 * 128 * 2 < 2**15), so
static layers calibrate to 7-bit activation codes (:func:`activation_bits`), per-tensor dynamic activations
use 127 levels, and the per-row oneDNN candidate is left out (``torch._int_mm`` multiplies int8 by int8
exactly on every CPU).
"""

from __future__ import annotations

import platform
import warnings
from collections.abc import Callable

import torch

from slimtorch.measure.latency import time_alternating

#: (kind, shape key) -> name of the fastest candidate measured on this machine
_CHOICE: dict[tuple, str] = {}

#: whether this CPU's uint8 x int8 products saturate in int16 (x86 without VNNI; see the module docstring)
U8S8_SATURATES = platform.machine().lower() in ("x86_64", "amd64") and not torch.cpu._is_vnni_supported()


def activation_bits() -> int:
    """Width of the unsigned activation codes static int8 layers calibrate to on this CPU: 8, or 7 where
    uint8 x int8 products saturate (:data:`U8S8_SATURATES`; torch.ao's x86 default reduces the range alike)."""
    return 7 if U8S8_SATURATES else 8


def fastest(key: tuple, candidates: dict[str, Callable[[], torch.Tensor]], reps: int = 3) -> str:
    """Name of the quickest of ``candidates`` (zero-argument calls), measured once per ``key`` and remembered.

    Candidates are timed in alternating blocks of one call each (``reps`` blocks, after a warm-up call that packs
    weights and creates oneDNN primitives; ``measure.latency.time_alternating``, which pins the process's malloc
    thresholds as every slimtorch timing does), so that load hits all alike; each is ranked by its best call.
    """
    if key not in _CHOICE:
        timings = time_alternating(candidates, blocks=reps, repeats=1, warmup=1)
        _CHOICE[key] = min(timings, key=lambda name: min(timings[name].samples_ms))  # best call: noise only adds
    return _CHOICE[key]


# torch 2.13 marks quantized-tensor creation deprecated; ``quantize_uint8`` uses it only as a fused kernel
warnings.filterwarnings("ignore", message=r"torch\.quantize_per_tensor.*deprecated", category=UserWarning)


def quantize_uint8(x: torch.Tensor, scale: float, zero_point: int) -> torch.Tensor:
    """``clamp(round(x * (1 / scale) + zero_point), 0, 255)`` in float32 as a plain uint8 tensor, layout kept.

    One fused pass: ``torch.quantize_per_tensor`` (5-7x faster than separate elementwise operations), whose
    quint8 storage is then read as uint8 in place (no copy, unlike ``int_repr``). It rounds half to even after
    adding the zero point, so at exact ties of ``x / scale`` it can differ by one code from rounding first (as
    ``qparams.quantize`` and ONNX's QuantizeLinear do); everywhere else the two agree.
    """
    return _quantize_fused(x, scale, zero_point, torch.quint8)


def _quantize_fused(x: torch.Tensor, scale: float, zero_point: int, qdtype: torch.dtype) -> torch.Tensor:
    """:func:`quantize_uint8` for ``qdtype`` quint8 (uint8 out) or qint8 (int8 out, clamped to -128..127)."""
    plain, lo, hi = (torch.uint8, 0, 255) if qdtype == torch.quint8 else (torch.int8, -128, 127)
    if torch.compiler.is_compiling():  # the same formula, which inductor fuses into one loop (set_ is untraceable)
        return torch.round(x * (1.0 / scale) + zero_point).clamp_(lo, hi).to(plain)
    q = torch.quantize_per_tensor(x, scale, zero_point, qdtype)
    return torch.empty(0, dtype=plain, device=x.device).set_(
        q.untyped_storage(), q.storage_offset(), q.size(), q.stride())


def chosen(key: tuple) -> str | None:
    """The candidate :func:`fastest` picked for ``key``, or None before it has raced."""
    return _CHOICE.get(key)


#: n -> int64 zeros [n]: the weight zero points oneDNN's int8 operators take (weights are symmetric); never written
_ZEROS: dict[int, torch.Tensor] = {}


def weight_zeros(n: int) -> torch.Tensor:
    """The shared all-zero int64 vector of length ``n`` (a plain dict memo: torch.compile traces it cleanly)."""
    if n not in _ZEROS:
        _ZEROS[n] = torch.zeros(n, dtype=torch.int64)
    return _ZEROS[n]


def qconv2d(
    x: torch.Tensor,
    packed: torch.Tensor,
    x_scale: float,
    x_zero_point: int,
    w_scale: torch.Tensor,
    bias: torch.Tensor | None,
    stride: list[int],
    padding: list[int],
    dilation: list[int],
    groups: int,
    relu: bool,
    x_qmax: int = 255,
) -> torch.Tensor:
    """Static int8 convolution of float ``x`` (quantized here, codes clamped to ``x_qmax``) with a weight from
    ``torch.ops.onednn.qconv_prepack``.

    Returns float32 in channels-last layout (the layout oneDNN prefers; the next layer keeps it).
    """
    qx = _clamped(quantize_uint8(x.contiguous(memory_format=torch.channels_last), x_scale, x_zero_point), x_qmax)
    return torch.ops.onednn.qconv2d_pointwise(
        qx, x_scale, x_zero_point, packed, w_scale, weight_zeros(w_scale.numel()), bias, stride, padding, dilation,
        groups, 1.0, 0, torch.float32, "relu" if relu else "none", [], "",
    )


def qlinear_static(
    x: torch.Tensor,
    packed: torch.Tensor,
    x_scale: float,
    x_zero_point: int,
    w_scale: torch.Tensor,
    bias: torch.Tensor | None,
    relu: bool = False,
    x_qmax: int = 255,
) -> torch.Tensor:
    """Static int8 linear layer of float ``x`` [..., in] (codes clamped to ``x_qmax``) with a weight from
    ``onednn.qlinear_prepack``."""
    qx = _clamped(quantize_uint8(x.reshape(-1, x.shape[-1]), x_scale, x_zero_point), x_qmax)
    out = qlinear_u8(qx, x_scale, x_zero_point, packed, w_scale, bias, relu)  # [M, out]
    return out.reshape(*x.shape[:-1], out.shape[-1])


def _clamped(qx: torch.Tensor, qmax: int) -> torch.Tensor:
    """uint8 codes capped at ``qmax`` (in place; nothing to do for the full range 255)."""
    return qx if qmax >= 255 else qx.clamp_(max=qmax)


def qlinear_u8(qx: torch.Tensor, x_scale: float, x_zero_point: int, packed: torch.Tensor, w_scale: torch.Tensor,
               bias: torch.Tensor | None, relu: bool = False) -> torch.Tensor:
    """oneDNN int8 product of an already quantized uint8 ``qx`` [M, in]: float32 [M, out] (+ bias, ReLU)."""
    return torch.ops.onednn.qlinear_pointwise(
        qx, x_scale, x_zero_point, packed, w_scale, weight_zeros(w_scale.numel()), bias, 1.0, 0, torch.float32,
        "relu" if relu else "none", [], "",
    )


def quantize_rows(x: torch.Tensor, unsigned: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric 8-bit per row of a 2-D float tensor: ``(q [M, K], scale float32 [M, 1])``.

    ``q`` is int8 (``round(x / scale)``, -127..127), or with ``unsigned`` the same codes + 128 as uint8 (the
    form oneDNN's u8 x s8 kernels take). Three passes: row extremes, scaling, one fused rounding.
    """
    # max(-min, max) reads x twice without writing; abs().amax() measured slower from 128 x 3072 up
    amax = torch.maximum(x.amax(dim=1, keepdim=True), x.amin(dim=1, keepdim=True).neg_()).clamp_(min=1e-12)
    q = _quantize_fused(x.mul(127.0 / amax), 1.0, 128 if unsigned else 0, torch.quint8 if unsigned else torch.qint8)
    return q, amax.mul_(1.0 / 127.0)


def _row_scaled(out: torch.Tensor, sx: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``out * sx + bias`` in one pass where there is a bias."""
    return out.mul_(sx) if bias is None else torch.addcmul(bias, out, sx)


def int_mm_rows(qx: torch.Tensor, sx: torch.Tensor, qweight_t: torch.Tensor, w_scale: torch.Tensor,
                bias: torch.Tensor | None = None) -> torch.Tensor:
    """Per-row dynamic int8 product through ``torch._int_mm``: ``(qx, sx) = quantize_rows(x)``, qweight_t int8
    [K, N], + bias; float32 [M, N]."""
    return _row_scaled(torch._int_mm(qx, qweight_t).float().mul_(w_scale), sx, bias)


def onednn_rows(qx: torch.Tensor, sx: torch.Tensor, packed: torch.Tensor, w_scale: torch.Tensor,
                bias: torch.Tensor | None = None) -> torch.Tensor:
    """Per-row dynamic int8 product (+ bias) through oneDNN, equal to :func:`int_mm_rows` up to float rounding.

    ``(qx, sx) = quantize_rows(x, unsigned=True)``: the codes + 128 as uint8, so with zero point 128 and scale 1
    oneDNN's integer accumulation is the exact ``sum(q_x * q_w)``; the per-row scales multiply the float output.
    """
    return _row_scaled(qlinear_u8(qx, 1.0, 128, packed, w_scale, None), sx, bias)


def tensor_qparams(x: torch.Tensor) -> tuple[float, int]:
    """Asymmetric uint8 ``(scale, zero_point)`` covering ``x``'s range (extended to include 0) with codes
    0..255, or 0..127 where uint8 x int8 products saturate (:func:`activation_bits`)."""
    qmax = 2 ** activation_bits() - 1
    lo, hi = torch.aminmax(x)
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    scale = max((hi - lo) / qmax, 1e-12)
    return scale, int(min(max(round(-lo / scale), 0), qmax))


def quantize_tensor(x: torch.Tensor) -> tuple[torch.Tensor, float, int]:
    """Asymmetric uint8 over ``x``'s range measured now: ``(q uint8, scale, zero_point)``."""
    scale, zp = tensor_qparams(x)
    return quantize_uint8(x, scale, zp), scale, zp


def fake_dynamic(x2: torch.Tensor, per_token: bool) -> torch.Tensor:
    """The float values a dynamic layer's quantized activation represents (its reference path)."""
    if per_token:
        q, s = quantize_rows(x2)
        return q.float() * s
    q, scale, zp = quantize_tensor(x2)
    return (q.float() - zp) * scale


def pack_int4_for_cpu(q: torch.Tensor) -> torch.Tensor:
    """Signed int4 codes [N, K] (int8 in -8..7) -> the layout of ``aten._weight_int4pack_mm_for_cpu``."""
    return torch.ops.aten._convert_weight_to_int4pack_for_cpu((q.to(torch.int32) + 8).contiguous(), 8)


def int4_scales_and_zeros(scale: torch.Tensor) -> torch.Tensor:
    """Per-group symmetric scales [N, K // g] -> ``[K // g, N, 2]`` (scale, zero=0) as the int4 kernel reads."""
    s = scale.t().contiguous()
    return torch.stack([s, torch.zeros_like(s)], dim=-1)
