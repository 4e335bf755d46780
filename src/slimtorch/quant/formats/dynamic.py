"""Dynamic int8: int8 per-channel weights, activations quantized at run time on every call.

``per_token`` True: one symmetric scale per row (token), then the faster of ``torch._int_mm`` and oneDNN for
the shape (a kernel race, remembered per shape); False: one asymmetric uint8 scale per call, then oneDNN.
"""

from __future__ import annotations

import torch

from slimtorch.io.manifest import register_module
from slimtorch.quant import kernels
from slimtorch.quant.modules import FixedMode, QuantLinear


@register_module
class DynamicQuantLinear(QuantLinear):
    """Linear layer with int8 weights whose activations are quantized per call.

    Args:
        in_features, out_features, bias, bits, group_size: as :class:`~slimtorch.quant.modules.QuantLinear`.
        per_token: one activation scale per row (``torch._int_mm`` or oneDNN, raced) rather than one per call
            (oneDNN, asymmetric uint8).
    """

    mode = FixedMode("dynamic")

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, bits: int = 8,
                 group_size: int = 0, per_token: bool = True) -> None:
        super().__init__(in_features, out_features, bias, bits=bits, group_size=group_size)
        self.per_token = per_token

    def manifest_args(self) -> dict:
        return {**super().manifest_args(), "per_token": self.per_token}

    def reference(self, x: torch.Tensor) -> torch.Tensor:
        """Float reference: the activation as the layer quantizes it, times the dequantized weight (+ bias)."""
        return self._linear(kernels.fake_dynamic(x.reshape(-1, x.shape[-1]).float(), self.per_token).reshape(x.shape))

    def _compute(self, x: torch.Tensor) -> torch.Tensor:
        x2 = x.reshape(-1, self.in_features)
        if "packed" not in self._cache:
            self._cache["packed"] = torch.ops.onednn.qlinear_prepack(self.int_weight(), None)
        if not self.per_token:
            out = kernels.qlinear_u8(*kernels.quantize_tensor(x2), self._cache["packed"], self.weight_scale, self.bias)
        else:
            out = self._per_row(x2)
        return out.reshape(*x.shape[:-1], self.out_features)

    def _per_row(self, x2: torch.Tensor) -> torch.Tensor:
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

    def _race_key(self, rows: int) -> tuple:
        """The per-row kernel race's key: rows bucketed to a power of two (token counts vary call to call, the
        best kernel rarely does)."""
        return ("dynamic_rows", self.in_features, self.out_features, 1 << max(rows - 1, 0).bit_length())

    def _traceable(self, rows: int) -> bool:
        """As the base, and: per-tensor layers read their activation range as Python numbers (a graph break
        anyway); a per-token layer's kernel race times calls, which cannot be traced, so its choice must already
        be made."""
        return super()._traceable(rows) and self.per_token and kernels.chosen(self._race_key(rows)) is not None
