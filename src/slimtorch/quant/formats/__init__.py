"""One layer class per stored quantized format, each with its own kernels.

- ``static``: :class:`StaticQuantLinear` and :class:`QuantConv2d` (int8 weights, uint8 activations on a grid
  calibrated ahead of time, oneDNN).
- ``dynamic``: :class:`DynamicQuantLinear` (int8 weights, activations quantized per call).
- ``weight_only``: :class:`WeightOnlyQuantLinear` (int8 or packed int4 weights, float activations).

Every Linear format is a :class:`~slimtorch.quant.modules.QuantLinear` (the common base: buffers, weight
readers, forward preamble) and says its format in the read-only ``mode`` class attribute.
"""

from __future__ import annotations

from slimtorch.errors import ConfigError
from slimtorch.quant.formats.dynamic import DynamicQuantLinear
from slimtorch.quant.formats.static import QuantConv2d, StaticQuantLinear
from slimtorch.quant.formats.weight_only import WeightOnlyQuantLinear
from slimtorch.quant.modules import QuantLinear

#: ``mode`` -> the quantized Linear class of that format
FORMATS: dict[str, type[QuantLinear]] = {
    "static": StaticQuantLinear,
    "dynamic": DynamicQuantLinear,
    "weight_only": WeightOnlyQuantLinear,
}


def linear_class(mode: str) -> type[QuantLinear]:
    """The quantized Linear class of a format.

    Args:
        mode: ``"static"``, ``"dynamic"`` or ``"weight_only"``.

    Returns:
        Its class from :data:`FORMATS`.

    Raises:
        ConfigError: ``mode`` names no format.
    """
    if mode not in FORMATS:
        raise ConfigError(f"mode={mode!r} is not a quantized Linear format; allowed: "
                          f"{', '.join(repr(m) for m in FORMATS)}")
    return FORMATS[mode]


__all__ = ["FORMATS", "DynamicQuantLinear", "QuantConv2d", "StaticQuantLinear", "WeightOnlyQuantLinear",
           "linear_class"]
