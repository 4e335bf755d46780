"""Quantized layers. They hold plain tensors only (integer data, scales, zero points) and call quant/kernels.py.

Attributes every quantized layer has (the contract ONNX export and ``st.save`` rely on):

- ``qweight``: int8 ``[out, in]`` (Linear) or ``[out, in / groups, kh, kw]`` (Conv2d) holding integers in the
  ``bits`` range; for ``bits == 4`` weight-only Linear it is uint8 ``[out, ceil(in / 2)]``, two signed values per
  byte, low nibble first (see quant/packing.py).
- ``weight_scale``: float32, ``[out]`` per output channel (``axis = 0``), or ``[out, ceil(in / group_size)]``
  per group (the last group is shorter where ``group_size`` does not divide ``in``).
- ``weight_zero_point``: int32, same shape as ``weight_scale``; always 0 (weights are symmetric).
- ``bias``: float32 ``[out]`` or None.
- ``bits`` (int), ``group_size`` (int, 0 = per channel), ``axis`` (int, always 0), ``mode`` (str):
  ``"static"`` (int8 activations calibrated ahead of time), ``"dynamic"`` (activations quantized per call) or
  ``"weight_only"`` (float activations).
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

import torch
import torch.nn.functional as F
from torch import nn

from slimtorch._log import logger
from slimtorch.io.manifest import register_module
from slimtorch.layer_kinds import pad_same
from slimtorch.quant import kernels
from slimtorch.quant.packing import unpack_int4
from slimtorch.quant.qparams import dequantize, fake_quantize, int32_bias, whole_groups

MODES = ("static", "dynamic", "weight_only")


class _QuantBase(nn.Module):
    """State common to quantized layers: buffers, a kernel cache cleared when new weights are loaded."""

    def _init_common(self, out: int, scale_shape: tuple[int, ...], bias: bool, mode: str, bits: int,
                     input_bits: int = 8) -> None:
        self.mode, self.bits, self.axis, self.input_bits = mode, bits, 0, input_bits
        self.register_buffer("weight_scale", torch.ones(scale_shape))
        self.register_buffer("weight_zero_point", torch.zeros(scale_shape, dtype=torch.int32))
        self.register_buffer("bias", torch.zeros(out) if bias else None)
        if mode == "static":
            self.register_buffer("input_scale", torch.tensor(1.0))
            self.register_buffer("input_zero_point", torch.tensor(0, dtype=torch.int32))
        self._cache: dict[str, torch.Tensor] = {}

    def _load_from_state_dict(self, *args, **kwargs):  # new weights: drop pre-packed kernels
        self._cache = {}
        super()._load_from_state_dict(*args, **kwargs)

    def __getstate__(self) -> dict:
        """Copies (``copy.deepcopy``) start with no pre-packed kernels: oneDNN's packed tensors cannot be copied."""
        return {**self.__dict__, "_cache": {}}

    def _input_qparams(self) -> tuple[float, int]:
        """The static input grid as Python numbers (cached with the packed weight: read once, not per call)."""
        return float(self.input_scale), int(self.input_zero_point)

    def set_input_grid(self, scale: torch.Tensor, zero_point: torch.Tensor, bits: int) -> None:
        """Set a static layer's input quantization (uint8 codes 0..2**bits - 1) and put its bias on the int32 grid
        of ``input_scale * weight_scale``, as int8 runtimes hold a bias (ONNX Runtime's QDQ format): the layer and
        its ONNX export then add the same bias, where a bias rounded only in the export differs by up to half a
        step, enough to flip codes in the next layer and, in deep networks, to grow."""
        self.input_scale, self.input_zero_point, self.input_bits = scale, zero_point, bits
        if self.bias is not None:
            step = scale.float() * self.weight_scale
            self.bias = int32_bias(self.bias, step) * step
        self._cache = {}

    def _fake_input(self, x: torch.Tensor) -> torch.Tensor:
        """The float values the static layer's uint8 input represents (reference path)."""
        return fake_quantize(x, self.input_scale, self.input_zero_point, bits=self.input_bits, signed=False)

    def _saturates(self) -> bool:
        """Whether this CPU's int8 kernel would saturate on this static layer's 8-bit input codes (it was
        calibrated on a CPU with VNNI): the layer then runs its float reference, logged once per layer."""
        if not (kernels.U8S8_SATURATES and self.input_bits > 7):
            return False
        if "saturates" not in self._cache:
            self._cache["saturates"] = True
            logger.warning("%s has 8-bit input codes, which this CPU's int8 kernels (no VNNI) cannot multiply "
                           "exactly: it runs in float. Quantize again on this machine (7-bit codes) for the "
                           "int8 kernels", type(self).__name__)
        return True

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


@register_module
class QuantLinear(_QuantBase):
    """Linear layer with integer weights; ``mode`` picks static, dynamic or weight-only execution.

    Args:
        in_features, out_features, bias: as ``nn.Linear``.
        mode: one of :data:`MODES`.
        bits: weight bit width (2..8; weight-only 4 is stored packed).
        group_size: inputs per weight scale (0 = one scale per output channel).
        relu: static mode only, apply ReLU inside the kernel.
        per_token: dynamic mode: one activation scale per row (``torch._int_mm``) rather than one per call
            (oneDNN, asymmetric uint8).
    """

    def __init__(
        self, in_features: int, out_features: int, bias: bool = True, *, mode: str = "static", bits: int = 8,
        group_size: int = 0, relu: bool = False, per_token: bool = True, input_bits: int = 8,
    ) -> None:
        super().__init__()
        self.in_features, self.out_features, self.group_size, self.relu = in_features, out_features, group_size, relu
        self.per_token = per_token
        scale_shape = (out_features, -(-in_features // group_size)) if group_size else (out_features,)
        self._init_common(out_features, scale_shape, bias, mode, bits, input_bits)
        packed = mode == "weight_only" and bits == 4
        cols = (in_features + 1) // 2 if packed else in_features
        self.register_buffer("qweight", torch.zeros(out_features, cols, dtype=torch.uint8 if packed else torch.int8))

    def manifest_args(self) -> dict:
        return {"in_features": self.in_features, "out_features": self.out_features, "bias": self.bias is not None,
                "mode": self.mode, "bits": self.bits, "group_size": self.group_size, "relu": self.relu,
                "per_token": self.per_token, "input_bits": self.input_bits}

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

    def reference(self, x: torch.Tensor) -> torch.Tensor:
        """Float reference of this layer (dequantized weight; quantized input for static mode)."""
        if self.mode == "static":
            x = self._fake_input(x)
        elif self.mode == "dynamic":
            x = kernels.fake_dynamic(x.reshape(-1, x.shape[-1]).float(), self.per_token).reshape(x.shape)
        out = F.linear(x.float(), self.dequantized_weight(), self.bias)
        return F.relu(out) if self.relu else out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not x.shape[:-1].numel():  # no rows: nothing to compute (range-reading kernels reject empty inputs)
            return x.new_zeros(*x.shape[:-1], self.out_features)
        if not x.is_cpu:
            return self.reference(x).to(x.dtype)
        if x.dtype != torch.float32:  # the CPU kernels take float32 activations: compute in float32, return x's dtype
            return self.forward(x.float()).to(x.dtype)
        if torch.compiler.is_compiling() and not self._traceable(x.numel() // self.in_features):
            return _outside_graph(self, x)
        if self.mode == "static":
            return self.reference(x) if self._saturates() else self._static(x)
        x2 = x.reshape(-1, self.in_features)
        if self.mode == "dynamic":
            out = self._dynamic(x2)
        else:
            out = self._weight_only(x2)
            if self.bias is not None:
                out = out.add_(self.bias)
        return out.reshape(*x.shape[:-1], self.out_features)

    def _static(self, x: torch.Tensor) -> torch.Tensor:
        if "packed" not in self._cache:
            self._cache["packed"] = torch.ops.onednn.qlinear_prepack(self.int_weight(), None)
            self._cache["qparams"] = self._input_qparams()
        return kernels.qlinear_static(x, self._cache["packed"], *self._cache["qparams"], self.weight_scale, self.bias,
                                      self.relu, 2**self.input_bits - 1)

    def _dynamic(self, x2: torch.Tensor) -> torch.Tensor:
        if "packed" not in self._cache:
            self._cache["packed"] = torch.ops.onednn.qlinear_prepack(self.int_weight(), None)
        if not self.per_token:
            return kernels.qlinear_u8(*kernels.quantize_tensor(x2), self._cache["packed"], self.weight_scale, self.bias)
        if "wt" not in self._cache:
            self._cache["wt"] = self.int_weight().t().contiguous()  # [in, out] for _int_mm
        candidates = {
            "int_mm_rows": lambda: kernels.int_mm_rows(*kernels.quantize_rows(x2), self._cache["wt"],
                                                       self.weight_scale, self.bias),
        }
        if not kernels.U8S8_SATURATES:  # its uint8 codes reach 255
            candidates["onednn_rows"] = lambda: kernels.onednn_rows(*kernels.quantize_rows(x2, unsigned=True),
                                                                    self._cache["packed"], self.weight_scale, self.bias)
        return candidates[kernels.fastest(self._race_key(x2.shape[0]), candidates)]()

    def _traceable(self, rows: int) -> bool:
        """As the base, and: inductor (torch 2.13) miscompiles the weight-only kernels; per-tensor dynamic layers
        read their activation range as Python numbers (a graph break anyway); a per-token layer's kernel race
        times calls, which cannot be traced, so its choice must already be made."""
        if self.mode == "weight_only" or not super()._traceable(rows):
            return False
        return self.mode == "static" or (self.per_token and kernels.chosen(self._race_key(rows)) is not None)

    def _race_key(self, rows: int) -> tuple:
        """The dynamic kernel race's key: rows bucketed to a power of two (token counts vary call to call, the
        best kernel rarely does)."""
        return ("dynamic_rows", self.in_features, self.out_features, 1 << max(rows - 1, 0).bit_length())

    def _weight_only_key(self, rows: int) -> tuple:
        return ("weight_only", self.bits, self.group_size, self.in_features, self.out_features, min(rows, 64))

    def input_rounding(self, x: torch.Tensor) -> torch.dtype:
        """The dtype this layer rounds inputs like ``x`` to before multiplying: bfloat16 where the weight-only
        kernel race picked a bfloat16-activation kernel for their shape, else ``x``'s own dtype."""
        rows = x.numel() // max(x.shape[-1], 1) if x.dim() else 1
        chosen = kernels.chosen(self._weight_only_key(rows)) if self.mode == "weight_only" else None
        return torch.bfloat16 if chosen is not None and chosen.endswith("_bf16") else x.dtype

    def _weight_only(self, x2: torch.Tensor) -> torch.Tensor:
        x2 = x2.contiguous()  # the packed kernels read dense rows: they reject sliced, transposed or expanded inputs
        key = self._weight_only_key(x2.shape[0])
        candidates = {"dequant_matmul": lambda: F.linear(x2, self.dequantized_weight())}
        # the packed kernels also run with bfloat16 activations (several times faster on CPUs with AVX512-BF16 or
        # AMX; activations then carry 8 significant bits): the race decides per shape
        if self.bits == 8 and not self.group_size:
            if "s16" not in self._cache:
                self._cache["s16"] = self.weight_scale.to(torch.bfloat16)
            candidates["int8pack_mm"] = lambda: torch.ops.aten._weight_int8pack_mm(
                x2, self.qweight, self.weight_scale)
            if self.in_features % 16 == 0:  # torch 2.13's bfloat16 kernel segfaults on other input widths
                candidates["int8pack_mm_bf16"] = lambda: torch.ops.aten._weight_int8pack_mm(
                    x2.to(torch.bfloat16), self.qweight, self._cache["s16"]).float()
        elif self.bits == 4 and self.group_size in (32, 64, 128, 256) and self.out_features % 16 == 0:
            # the kernel takes whole groups: a short last one is filled with zero codes, the input with zeros
            if "int4" not in self._cache:
                self._cache["int4"] = kernels.pack_int4_for_cpu(whole_groups(self.int_weight(), self.group_size))
                self._cache["sz"] = kernels.int4_scales_and_zeros(self.weight_scale)
                self._cache["sz16"] = self._cache["sz"].to(torch.bfloat16)
            xp = whole_groups(x2, self.group_size)
            candidates["int4pack_mm"] = lambda: torch.ops.aten._weight_int4pack_mm_for_cpu(
                xp, self._cache["int4"], self.group_size, self._cache["sz"])
            candidates["int4pack_mm_bf16"] = lambda: torch.ops.aten._weight_int4pack_mm_for_cpu(
                xp.to(torch.bfloat16), self._cache["int4"], self.group_size, self._cache["sz16"]).float()
        return candidates[kernels.fastest(key, candidates)]()


@register_module
class QuantConv2d(_QuantBase):
    """Static int8 2-D convolution (grouped and depthwise too) on oneDNN, BatchNorm folded in, ReLU fusable.

    Args:
        in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias: as ``nn.Conv2d``
            (integer padding only).
        bits: weight bit width (2..8, stored as int8).
        relu: apply ReLU inside the kernel.

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
        self._init_common(out_channels, (out_channels,), bias, "static", bits, input_bits)
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
        if "packed" not in self._cache:
            self._cache["qparams"] = self._input_qparams()
            self._cache["packed"] = torch.ops.onednn.qconv_prepack(
                self.qweight, self.weight_scale, *self._cache["qparams"], self.stride, self.padding, self.dilation,
                self.groups, None)
        return kernels.qconv2d(x, self._cache["packed"], *self._cache["qparams"], self.weight_scale, self.bias,
                               self.stride, self.padding, self.dilation, self.groups, self.relu,
                               2**self.input_bits - 1)
