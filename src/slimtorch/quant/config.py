"""Quantization configs: one frozen dataclass per method (recipe stage ``quantize``)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

from slimtorch.config import REGISTRY, Config, check_range, register, suggest
from slimtorch.errors import ConfigError

Observer = Literal["minmax", "moving_average", "percentile", "mse", "entropy"]


def _check_patterns(owner: str, field: str, value: tuple | None) -> None:
    if value is not None and any(not isinstance(p, str) for p in value):
        raise ConfigError(f"{owner}.{field}={value!r} must be a list of layer-name patterns or type names")


@register("quantize", "static")
@dataclass(frozen=True, kw_only=True)
class StaticQuant(Config):
    """Static post-training int8: weights per output channel (symmetric int8), activations per tensor
    (asymmetric uint8) with ranges calibrated ahead of time; Linear and Conv2d run on integer kernels.

    Attributes:
        bits: 8 (the integer kernels are int8; use ``WeightOnlyQuant`` for 4-bit weights).
        observer: how activation ranges are chosen from calibration data (see ``quant.observers``).
        percentile: the percentile for ``observer="percentile"`` (e.g. 99.99).
        calibration_batches: batches of data to calibrate on.
        fold_bn: fold BatchNorm into the preceding convolution first.
        fuse_relu: run a ReLU that directly follows a layer inside its kernel.
        equalize: cross-layer equalization first (``quant.equalize``): consecutive layers' channels rescaled so
            both have the same weight range per channel; the float model computes the same, the per-channel
            ranges of depthwise convolutions stop spreading over orders of magnitude.
        bias_correction: after quantizing, remove each layer's mean output shift on the calibration data
            (``quant.bias_correction``), layer by layer in execution order.
        adaround: choose each weight's rounding (up or down) to minimize the layer's output error on the
            calibration data (``quant.adaround``) rather than rounding to nearest.
        adaround_seconds: time budget of AdaRound for all layers together, in seconds (split evenly; a layer
            out of time keeps the best rounding found so far, never worse than nearest).
        lower: after quantizing, rewrite the model's graph (``quant.lower``) so that tensors between int8
            operators stay uint8: each layer writes its output on the next one's grid, residual adds run on the
            integer kernels, pooling and reshapes on uint8; parts that cannot be traced stay as they are (the
            step's log says how many layers run chained and why others do not). False: every int8 layer takes
            float in and gives float out.
        include: only these layers (patterns or type names); None: every Linear and Conv2d.
        exclude: layers kept in float (mixed precision).
    """

    bits: int = 8
    observer: Observer = "minmax"
    percentile: float = 99.99
    calibration_batches: int = 32
    fold_bn: bool = True
    fuse_relu: bool = True
    equalize: bool = False
    bias_correction: bool = False
    adaround: bool = False
    adaround_seconds: float = 60.0
    lower: bool = True
    include: tuple[str, ...] | None = None
    exclude: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        super().__post_init__()
        name = type(self).__name__
        if self.bits != 8:
            raise ConfigError(f"{name}.bits={self.bits!r} is not allowed; static quantization runs int8 kernels "
                              "(bits=8); for 4-bit weights use WeightOnlyQuant(bits=4)")
        check_range(name, "percentile", self.percentile, 50, 100)
        check_range(name, "calibration_batches", self.calibration_batches, 1, integer=True)
        check_range(name, "adaround_seconds", self.adaround_seconds, 0, lo_open=True)
        _check_patterns(name, "include", self.include)
        _check_patterns(name, "exclude", self.exclude)

    def requires_data(self) -> bool:
        """Calibration needs data."""
        return True


@register("quantize", "dynamic")
@dataclass(frozen=True, kw_only=True)
class DynamicQuant(Config):
    """Dynamic int8 for Linear layers: int8 per-channel weights, activations quantized at run time.

    Attributes:
        bits: 8.
        activations: "token" (one scale per row/token, more accurate) or "tensor" (one scale per call).
        include: only these layers; None: every Linear.
        exclude: layers kept in float.
    """

    bits: int = 8
    activations: Literal["token", "tensor"] = "token"
    include: tuple[str, ...] | None = None
    exclude: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        super().__post_init__()
        name = type(self).__name__
        if self.bits != 8:
            raise ConfigError(f"{name}.bits={self.bits!r} is not allowed; dynamic quantization is int8 (bits=8)")
        _check_patterns(name, "include", self.include)
        _check_patterns(name, "exclude", self.exclude)


@register("quantize", "weight_only")
@dataclass(frozen=True, kw_only=True)
class WeightOnlyQuant(Config):
    """Integer weights, float activations (memory-bound inference at small batch, the LLM case).

    Attributes:
        bits: 8 or 4 (int4 is stored packed two per byte).
        group_size: one scale per this many input columns (32/64/128/...); None: one scale per output row.
        include: only these layers; None: every Linear.
        exclude: layers kept in float.
    """

    bits: Literal[4, 8] = 4
    group_size: int | None = 128
    include: tuple[str, ...] | None = None
    exclude: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        super().__post_init__()
        name = type(self).__name__
        if self.group_size is not None:
            check_range(name, "group_size", self.group_size, 2, integer=True)
        if self.bits == 4 and self.group_size is None:
            raise ConfigError(f"{name}.group_size=None is not allowed with bits=4; use a group size such as 128")
        _check_patterns(name, "include", self.include)
        _check_patterns(name, "exclude", self.exclude)


#: the formats quantization-aware training can train for: their method names
QAT_TARGETS = ("static", "dynamic", "weight_only", "binary", "ternary")


@register("quantize", "qat")
@dataclass(frozen=True, kw_only=True)
class QuantAwareTraining(Config):
    """Quantization-aware training as one recipe stage: the chosen layers become fake-quant training layers of the
    ``target`` format, train on the stage's labelled data (distilling from the model as it was before the stage),
    then become that format's integer layers -- ``st.prepare_qat``, ``st.finetune`` and ``st.convert`` in one.

    Attributes:
        target: the format trained for, by name with its defaults -- "static" (int8 weights and activations,
            ``StaticQuant``), "dynamic" (``DynamicQuant``), "weight_only" (``WeightOnlyQuant`` with ``bits`` and
            ``group_size``), "binary" (``Binarize``), "ternary" (``Ternarize``) -- or as that format's config,
            e.g. ``Binarize(activations=True)`` (in YAML a mapping: ``target: {method: binary, activations: true}``).
        bits, group_size: the weight-only format when ``target`` is the name "weight_only" (a config target
            carries its own).
        epochs: training epochs.
        lr: learning rate; None: 1e-3 for binary and ternary targets (their weights start far from float), 1e-4
            for the others (the weights start trained and near their grid).
        distill: distill from the model as it was before the stage.
        max_batches: stop each epoch after this many batches (None: the whole loader).
        include: only these layers (static, dynamic, weight-only; None: every layer the format takes).
        exclude: layers kept in float (added to a config target's own).

    Example:
        >>> import slimtorch as st
        >>> st.QuantAwareTraining(target=st.Ternarize(threshold=0.5), epochs=2).format_config()
        Ternarize(keep_first=True, keep_last=True, exclude=(), calibration_batches=8, threshold=0.5)
    """

    target: Literal["static", "dynamic", "weight_only", "binary", "ternary"] | Config = "static"
    bits: Literal[4, 8] = 8
    group_size: int | None = None
    epochs: int = 1
    lr: float | None = None
    distill: bool = True
    max_batches: int | None = None
    include: tuple[str, ...] | None = None
    exclude: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        name = type(self).__name__
        if isinstance(self.target, dict):  # a recipe's mapping: the format's own config
            object.__setattr__(self, "target", _format_from_dict(self.target, f"{name}.target"))
        super().__post_init__()
        if isinstance(self.target, Config):
            if self.target.method not in QAT_TARGETS:
                raise ConfigError(f"{name}.target={type(self.target).__name__}(...) cannot be trained for; use one "
                                  f"of the formats {list(QAT_TARGETS)} (by name or as their config)")
            if (self.bits, self.group_size) != (8, None):
                raise ConfigError(f"{name}.bits/group_size apply to target='weight_only' by name; set them on the "
                                  f"target config, {type(self.target).__name__}(bits=..., group_size=...)")
        check_range(name, "epochs", self.epochs, 1, integer=True)
        if self.lr is not None:
            check_range(name, "lr", self.lr, 0, lo_open=True)
        if self.max_batches is not None:
            check_range(name, "max_batches", self.max_batches, 1, integer=True)
        if self.include is not None and self.target_method() in ("binary", "ternary"):
            raise ConfigError(f"{name}.include is not allowed with a {self.target_method()} target; use exclude")
        _check_patterns(name, "include", self.include)
        _check_patterns(name, "exclude", self.exclude)
        self.format_config()  # the target's own checks (e.g. bits=4 needs a group size)

    def requires_data(self) -> bool:
        """Training needs a labelled loader."""
        return True

    def target_method(self) -> str:
        """The method name of the format trained for ("static", ..., "binary"), whether ``target`` names it or is
        its config."""
        return self.target.method if isinstance(self.target, Config) else self.target

    def learning_rate(self) -> float:
        """``lr``, or the target's default when it is None (see the class docstring)."""
        if self.lr is not None:
            return self.lr
        return 1e-3 if self.target_method() in ("binary", "ternary") else 1e-4

    def format_config(self) -> Config:
        """The config of the format trained for, with this stage's layer choice."""
        from slimtorch.quant.binary.config import Binarize, Ternarize

        if isinstance(self.target, Config):
            changes: dict = {"exclude": tuple(self.target.exclude) + tuple(self.exclude)}
            if self.include is not None:
                changes["include"] = self.include
            return dataclasses.replace(self.target, **changes)
        if self.target in ("binary", "ternary"):
            return (Binarize if self.target == "binary" else Ternarize)(exclude=self.exclude)
        if self.target == "weight_only":
            return WeightOnlyQuant(bits=self.bits, group_size=self.group_size, include=self.include,
                                   exclude=self.exclude)
        return (StaticQuant if self.target == "static" else DynamicQuant)(include=self.include, exclude=self.exclude)


def _format_from_dict(values: dict, where: str) -> Config:
    """The quantization config a recipe's ``target: {method: ..., ...}`` mapping names."""
    import slimtorch.quant.binary.config  # noqa: F401  (files Binarize and Ternarize in the registry)

    method = values.get("method")
    formats = REGISTRY.get("quantize", {})
    if method not in QAT_TARGETS or method not in formats:
        raise ConfigError(f"{where}: method={method!r} is not a format QAT trains for; choose one of "
                          f"{list(QAT_TARGETS)}{suggest(method, QAT_TARGETS)}")
    return formats[method].from_dict(values, where=where)
