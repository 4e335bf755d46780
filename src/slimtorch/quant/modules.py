"""Quantized layers: what every stored format has in common. They hold plain tensors only (integer data, scales,
zero points) and call quant/kernels.py.

One class per stored format lives in ``quant/formats/``: :class:`~slimtorch.quant.formats.StaticQuantLinear`,
:class:`~slimtorch.quant.formats.DynamicQuantLinear` and :class:`~slimtorch.quant.formats.WeightOnlyQuantLinear`
(all subclasses of :class:`QuantLinear`, this file's common base) and
:class:`~slimtorch.quant.formats.QuantConv2d` (static). Each owns its kernel choice; this file holds the buffers,
the weight readers and the forward preamble they share.

Attributes every quantized layer has (the contract ONNX export and ``st.save`` rely on):

- ``qweight``: int8 ``[out, in]`` (Linear) or ``[out, in / groups, kh, kw]`` (Conv2d) holding integers in the
  ``bits`` range; for ``bits == 4`` weight-only Linear it is uint8 ``[out, ceil(in / 2)]``, two signed values per
  byte, low nibble first (see quant/packing.py).
- ``weight_scale``: float32, ``[out]`` per output channel (``axis = 0``), or ``[out, ceil(in / group_size)]``
  per group (the last group is shorter where ``group_size`` does not divide ``in``).
- ``weight_zero_point``: int32, same shape as ``weight_scale``; always 0 (weights are symmetric).
- ``bias``: float32 ``[out]`` or None.
- ``bits`` (int), ``group_size`` (int, 0 = per channel), ``axis`` (int, always 0), ``mode`` (str, fixed by the
  class, read-only): ``"static"`` (``StaticQuantLinear``, ``QuantConv2d``: int8 activations calibrated ahead of
  time), ``"dynamic"`` (``DynamicQuantLinear``: activations quantized per call; ``per_token``: one scale per row
  rather than one per call) or ``"weight_only"`` (``WeightOnlyQuantLinear``: float activations).
- static only: ``input_scale`` (float32, 0-d) and ``input_zero_point`` (int32, 0-d; activations are uint8),
  ``input_bits`` (8, or 7 when calibrated on a CPU whose uint8 x int8 products saturate: codes 0..127, see
  quant/kernels.py) and ``relu`` (bool, ReLU fused after the layer). A layer with 8-bit input codes on such a
  CPU runs its float reference (correct, not faster than float) and says so once in the log.
- ``dequantized_weight() -> float32 tensor`` of the float weight's shape: the weight the kernel computes with.

Every layer's output equals its float reference (dequantized weight, and for static layers the
fake-quantized input) within float rounding; weight-only layers may pick a bfloat16-activation kernel when
it measures faster, which rounds activations to bfloat16 (relative error about 2**-8).

Inputs are what the float layer takes: Linear ``[..., in]`` (1-D included), Conv2d ``[N, C, H, W]`` or unbatched
``[C, H, W]``, in any memory layout (copied to a dense layout only for the kernels that need one), empty batches
giving empty outputs. bfloat16/float16 inputs run the same integer kernels in float32 and come back in their own
dtype; the buffers stay float32 whatever the model's dtype.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from slimtorch.io.manifest import register_module
from slimtorch.quant.packing import unpack_int4
from slimtorch.quant.qparams import dequantize


class FixedMode:
    """The ``mode`` class attribute of a quantized layer: read on the class or an instance, never set on an
    instance (a layer's format is its class; build the other format's class instead)."""

    def __init__(self, mode: str) -> None:
        self.mode = mode

    def __get__(self, obj: Any, owner: type | None = None) -> str:
        return self.mode

    def __set__(self, obj: Any, value: Any) -> None:
        raise AttributeError(f"{type(obj).__name__}.mode is {self.mode!r}, fixed by the class; build the layer "
                             "class of the other format (slimtorch.quant.formats.linear_class)")


class _QuantBase(nn.Module):
    """State common to quantized layers: buffers, a kernel cache cleared when new weights are loaded."""

    def _init_common(self, out: int, scale_shape: tuple[int, ...], bias: bool, bits: int) -> None:
        self.bits, self.axis = bits, 0
        self.register_buffer("weight_scale", torch.ones(scale_shape))
        self.register_buffer("weight_zero_point", torch.zeros(scale_shape, dtype=torch.int32))
        self.register_buffer("bias", torch.zeros(out) if bias else None)
        self._cache: dict[str, Any] = {}

    def _load_from_state_dict(self, *args, **kwargs):  # new weights: drop pre-packed kernels
        self._cache = {}
        super()._load_from_state_dict(*args, **kwargs)

    def __getstate__(self) -> dict:
        """Copies (``copy.deepcopy``) start with no pre-packed kernels: oneDNN's packed tensors cannot be copied."""
        return {**self.__dict__, "_cache": {}}

    def _traceable(self, rows: int) -> bool:
        """Whether torch.compile may trace this layer's integer kernels rather than call the layer as is.

        Inductor lowers oneDNN's int8 operators only with ``torch._inductor.config.freezing`` on (their
        pre-packed weights must be graph constants) and fails otherwise, and the packed weight must already
        exist. Subclasses add their own conditions.
        """
        import torch._inductor.config as inductor_config

        return bool(inductor_config.freezing) and "packed" in self._cache

    def weight_counts(self) -> tuple[int, int]:
        """(logical weight count, nonzero weights), bias included, for ``st.measure``."""
        w = self.dequantized_weight()
        nb = 0 if self.bias is None else self.bias.numel()
        nzb = 0 if self.bias is None else int(torch.count_nonzero(self.bias))
        return w.numel() + nb, int(torch.count_nonzero(w)) + nzb


@torch.compiler.disable
def _outside_graph(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Run a quantized layer eagerly from inside a torch.compile'd model (a graph break around it)."""
    return layer.forward(x)


#: arguments that files written before the formats were classes record for every ``QuantLinear``, whatever its
#: mode: dropped where the class of that mode does not take them
_LEGACY_ARGS = ("relu", "per_token", "input_bits")


@register_module
class QuantLinear(_QuantBase):
    """Common base of the quantized Linear formats (``slimtorch.quant.formats``): integer weights, the
    buffers, the weight readers and the forward preamble. Build a format's class, never this one.

    Args:
        in_features, out_features, bias: as ``nn.Linear``.
        bits: weight bit width (2..8; weight-only 4 is stored packed).
        group_size: inputs per weight scale (0 = one scale per output channel).
    """

    mode: str
    #: whether ``bits == 4`` weights are stored packed, two per byte (weight-only)
    _PACKS_INT4 = False

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, bits: int = 8,
                 group_size: int = 0) -> None:
        if type(self) is QuantLinear:
            raise TypeError("QuantLinear is the common base of the quantized Linear formats: build "
                            "StaticQuantLinear, DynamicQuantLinear or WeightOnlyQuantLinear "
                            "(slimtorch.quant.formats.linear_class(mode))")
        super().__init__()
        self.in_features, self.out_features, self.group_size = in_features, out_features, group_size
        scale_shape = (out_features, -(-in_features // group_size)) if group_size else (out_features,)
        self._init_common(out_features, scale_shape, bias, bits)
        packed = self._PACKS_INT4 and bits == 4
        cols = (in_features + 1) // 2 if packed else in_features
        self.register_buffer("qweight", torch.zeros(out_features, cols, dtype=torch.uint8 if packed else torch.int8))

    @classmethod
    def from_manifest(cls, **args: Any) -> QuantLinear:
        """The empty layer a manifest entry describes (``slimtorch.load``). Files written before the formats
        were classes name ``QuantLinear`` with a ``mode`` argument (default ``"static"``) and every format's
        arguments: ``mode`` picks the class, and the arguments it does not take are dropped.

        Raises:
            ValueError: ``mode`` names no format.
        """
        if cls is not QuantLinear:
            return cls(**args)
        mode = args.pop("mode", "static")
        formats = {sub.mode: sub for sub in QuantLinear.__subclasses__()}
        if mode not in formats:
            raise ValueError(f"mode {mode!r} is not a quantized Linear format; allowed: {sorted(formats)}")
        takes = inspect.signature(formats[mode]).parameters
        return formats[mode](**{k: v for k, v in args.items() if k not in _LEGACY_ARGS or k in takes})

    def manifest_args(self) -> dict:
        return {"in_features": self.in_features, "out_features": self.out_features, "bias": self.bias is not None,
                "bits": self.bits, "group_size": self.group_size}

    def int_weight(self) -> torch.Tensor:
        """Weight integers as int8 [out, in] (unpacked if stored as int4)."""
        if self.qweight.dtype == torch.uint8:
            return unpack_int4(self.qweight, self.in_features, signed=True)
        return self.qweight

    def dequantized_weight(self) -> torch.Tensor:
        return dequantize(self.int_weight(), self.weight_scale, self.weight_zero_point, axis=0,
                          group_size=self.group_size or None)

    def extra_repr(self) -> str:
        g = f", group_size={self.group_size}" if self.group_size else ""
        return f"{self.in_features}, {self.out_features}, mode={self.mode}, bits={self.bits}{g}"

    def _linear(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` (already rounded as the format rounds inputs) times the dequantized weight, + bias, in float32."""
        return F.linear(x.float(), self.dequantized_weight(), self.bias)

    def reference(self, x: torch.Tensor) -> torch.Tensor:
        """Float reference of this layer: what its kernels compute, in float32 (each format defines it)."""
        raise NotImplementedError

    def input_rounding(self, x: torch.Tensor) -> torch.dtype:
        """The dtype this layer rounds inputs like ``x`` to before multiplying: ``x``'s own dtype, unless the
        format says otherwise (weight-only layers on a bfloat16-activation kernel)."""
        return x.dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not x.shape[:-1].numel():  # no rows: nothing to compute (range-reading kernels reject empty inputs)
            return x.new_zeros(*x.shape[:-1], self.out_features)
        if not x.is_cpu:
            return self.reference(x).to(x.dtype)
        if x.dtype != torch.float32:  # the CPU kernels take float32 activations: compute in float32, return x's dtype
            return self.forward(x.float()).to(x.dtype)
        if torch.compiler.is_compiling() and not self._traceable(x.numel() // self.in_features):
            return _outside_graph(self, x)
        return self._compute(x)

    def _compute(self, x: torch.Tensor) -> torch.Tensor:
        """The format's kernels on a non-empty float32 CPU input ``[..., in]``: float32 ``[..., out]``."""
        raise NotImplementedError
