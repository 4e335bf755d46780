"""Weight-only: integer weights (int8 per channel, or 2..8 bits per group; int4 stored packed), float activations.

The fastest of the candidate kernels for a shape is measured once and kept (``kernels.fastest``): dequantize
then matmul always; ``aten._weight_int8pack_mm`` for int8 per channel and ``aten._weight_int4pack_mm_for_cpu``
for int4 in groups of 32..256, each also with bfloat16 activations (several times faster on CPUs with
AVX512-BF16 or AMX; activations then carry 8 significant bits, see :meth:`WeightOnlyQuantLinear.input_rounding`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from slimtorch.io.manifest import register_module
from slimtorch.quant import kernels
from slimtorch.quant.modules import FixedMode, QuantLinear
from slimtorch.quant.qparams import whole_groups


@register_module
class WeightOnlyQuantLinear(QuantLinear):
    """Linear layer with integer weights and float activations.

    Args:
        in_features, out_features, bias, bits, group_size: as :class:`~slimtorch.quant.modules.QuantLinear`
            (``bits == 4`` is stored packed, two values per byte).
    """

    mode = FixedMode("weight_only")
    _PACKS_INT4 = True

    def reference(self, x: torch.Tensor) -> torch.Tensor:
        """Float reference: ``x`` times the dequantized weight (+ bias)."""
        return self._linear(x)

    def _race_key(self, rows: int) -> tuple:
        """The kernel race's key: the format and shape, rows up to 64 (beyond, the best kernel stays)."""
        return ("weight_only", self.bits, self.group_size, self.in_features, self.out_features, min(rows, 64))

    def input_rounding(self, x: torch.Tensor) -> torch.dtype:
        """The dtype this layer rounds inputs like ``x`` to before multiplying: bfloat16 where the kernel race
        picked a bfloat16-activation kernel for their shape, else ``x``'s own dtype."""
        rows = x.numel() // max(x.shape[-1], 1) if x.dim() else 1
        chosen = kernels.chosen(self._race_key(rows))
        return torch.bfloat16 if chosen is not None and chosen.endswith("_bf16") else x.dtype

    def _traceable(self, rows: int) -> bool:
        """Never: inductor (torch 2.13) miscompiles the weight-only kernels."""
        return False

    def _compute(self, x: torch.Tensor) -> torch.Tensor:
        # the packed kernels read dense rows: they reject sliced, transposed or expanded inputs
        x2 = x.reshape(-1, self.in_features).contiguous()
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
        out = candidates[kernels.fastest(self._race_key(x2.shape[0]), candidates)]()
        if self.bias is not None:
            out = out.add_(self.bias)
        return out.reshape(*x.shape[:-1], self.out_features)
