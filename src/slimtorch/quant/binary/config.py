"""The binary and ternary configs (recipe stage ``quantize``, methods ``binary`` and ``ternary``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from slimtorch.config import Config, check_range, register
from slimtorch.errors import ConfigError
from slimtorch.quant.binary.math import TWN_THRESHOLD


@dataclass(frozen=True, kw_only=True)
class _BinaryCommon(Config):
    """Fields shared by :class:`Binarize` and :class:`Ternarize` (see there)."""

    keep_first: bool = True
    keep_last: bool = True
    exclude: tuple[str, ...] = ()
    calibration_batches: int = 8

    removed: ClassVar[dict[str, str]] = dict.fromkeys(
        ("finetune_epochs", "finetune_lr"),
        "train through the straight-through estimator with quantization-aware training (recipe: `- quantize: "
        "{method: qat, target: {method: binary, ...}, epochs: N}`; Python: st.quantize(model, "
        "st.QuantAwareTraining(target=st.Binarize(...), epochs=N), data=...))")

    def __post_init__(self) -> None:
        super().__post_init__()
        name = type(self).__name__
        check_range(name, "calibration_batches", self.calibration_batches, 1, integer=True)
        if not all(isinstance(p, str) for p in self.exclude):
            raise ConfigError(f"{name}.exclude={self.exclude!r} must be a list of layer-name patterns")

    def mode(self) -> dict[str, Any]:
        """Keyword arguments of the binary layers for this config."""
        raise NotImplementedError


@register("quantize", "binary")
@dataclass(frozen=True, kw_only=True)
class Binarize(_BinaryCommon):
    """1-bit weights ``alpha * sign(w)`` with ``alpha`` the per-output-channel mean |w| (XNOR-Net).

    Attributes:
        activations: also binarize each layer's input as ``sign(x - shift)`` (a fully binary layer computed
            with XNOR-popcount); ``shift`` is per input channel, set from calibration data (the mean input)
            when data is given and then trained.
        keep_first: leave the model's first Linear/Conv2d (in registration order) in float.
        keep_last: leave the model's last Linear/Conv2d (usually the classifier) in float.
        exclude: patterns of layers to leave in float (see ``slimtorch.select``).
        calibration_batches: batches of data used to set the activation thresholds and, afterwards, to
            re-estimate BatchNorm statistics.

    Training through the straight-through estimator before packing is ``QuantAwareTraining(target=Binarize(...))``.
    """

    activations: bool = False

    def mode(self) -> dict[str, Any]:
        """Keyword arguments of the binary layers for this config."""
        return {"ternary": False, "activations": self.activations}


@register("quantize", "ternary")
@dataclass(frozen=True, kw_only=True)
class Ternarize(_BinaryCommon):
    """2-bit weights in {-alpha, 0, +alpha} per output channel (Ternary Weight Networks).

    Attributes:
        threshold: weights with ``|w| <= threshold * mean |w|`` (per output channel) become 0; TWN's 0.7.
        keep_first, keep_last, exclude, calibration_batches: as in
            :class:`Binarize`.
    """

    threshold: float = TWN_THRESHOLD

    def __post_init__(self) -> None:
        super().__post_init__()
        check_range(type(self).__name__, "threshold", self.threshold, 0, 2, lo_open=True)

    def mode(self) -> dict[str, Any]:
        """Keyword arguments of the binary layers for this config."""
        return {"ternary": True, "activations": False, "threshold": self.threshold}
