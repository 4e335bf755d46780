"""Pruning configs: one frozen dataclass per method (recipe stage ``prune``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from slimtorch.config import Config, check_range, register
from slimtorch.errors import ConfigError
from slimtorch.prune import importance as imp

#: channel importance criteria of structured pruning
Importance = Literal["l1", "l2", "bn_scale", "taylor", "random"]



@register("prune", "unstructured")
@dataclass(frozen=True, kw_only=True)
class UnstructuredPruning(Config):
    """Zero a fraction of individual weights, least important first.

    Attributes:
        sparsity: fraction (0-1) of the chosen layers' weights to zero, globally or per layer.
        importance: "l1" / "l2" magnitude, "random" (seeded baseline), "taylor" (|w * dL/dw| over calibration
            data) or "movement" (-w * dL/dw over calibration data, or over training in ``GradualPruning``).
        scope: "global" ranks all chosen weights together; "layer" prunes each layer to ``sparsity``.
        per_layer: layer name -> sparsity for layers that get their own (overrides ``scope``/``sparsity``).
        include: name/type patterns of the layers to prune (None: every Linear and Conv).
        exclude: patterns of layers to leave alone.
        prune_head: also prune the last Linear (the classifier head), left alone by default.
        calibration_batches: batches of data for "taylor"/"movement" and BatchNorm recalibration.
        recalibrate_bn: when ``data`` is given, re-estimate BatchNorm running statistics on it after pruning
            (zeroing most of a conv's weights shifts its output statistics; without this a 90%-sparse CNN
            can fall to chance until fine-tuned).
        keep_masks: keep masks and hooks so fine-tuning keeps pruned weights at zero; False folds them now
            (``make_permanent``).
        kernel: "dense" keeps dense layers; "auto" times a sparse CSR kernel against the dense one for each
            Linear layer on ``example_inputs`` and switches the layers where sparse measured faster (implies
            folding the masks).
    """

    sparsity: float = 0.5
    importance: Literal["l1", "l2", "random", "taylor", "movement"] = "l1"
    scope: Literal["global", "layer"] = "global"
    per_layer: dict[str, float] | None = None
    include: tuple[str, ...] | None = None
    exclude: tuple[str, ...] = ()
    prune_head: bool = False
    calibration_batches: int = 8
    recalibrate_bn: bool = True
    keep_masks: bool = True
    kernel: Literal["dense", "auto"] = "dense"

    def __post_init__(self) -> None:
        super().__post_init__()
        name = type(self).__name__
        check_range(name, "sparsity", self.sparsity, 0, 1, hi_open=True)
        check_range(name, "calibration_batches", self.calibration_batches, 1, integer=True)
        for layer, value in (self.per_layer or {}).items():
            if not isinstance(layer, str):
                raise ConfigError(f"{name}.per_layer keys must be layer names, got {layer!r}")
            check_range(name, f"per_layer[{layer!r}]", value, 0, 1)

    def requires_data(self) -> bool:
        """Taylor and movement importance need calibration batches."""
        return self.importance in imp.DATA_CRITERIA


@register("prune", "nm")
@dataclass(frozen=True, kw_only=True)
class NMPruning(Config):
    """Keep at most ``n`` non-zeros in every ``m`` consecutive weights along the input dimension.

    Attributes:
        n: weights kept per group.
        m: group size (a multiple-of-m input size is needed; other layers stay dense).
        importance: how weights are ranked inside a group ("l1", "l2", "random", "taylor", "movement").
        include: name/type patterns of the layers to prune (None: every Linear and Conv).
        exclude: patterns of layers to leave alone.
        prune_head: also prune the last Linear (the classifier head).
        calibration_batches: batches of data for "taylor"/"movement" and BatchNorm recalibration.
        recalibrate_bn: when ``data`` is given, re-estimate BatchNorm running statistics after pruning.
        keep_masks: keep masks so fine-tuning holds the pattern; False folds them now.
    """

    n: int = 2
    m: int = 4
    importance: Literal["l1", "l2", "random", "taylor", "movement"] = "l1"
    include: tuple[str, ...] | None = None
    exclude: tuple[str, ...] = ()
    prune_head: bool = False
    calibration_batches: int = 8
    recalibrate_bn: bool = True
    keep_masks: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        name = type(self).__name__
        check_range(name, "m", self.m, 1, integer=True)
        check_range(name, "n", self.n, 0, integer=True)
        if self.n > self.m:
            raise ConfigError(f"{name}.n={self.n} is larger than m={self.m}; N:M keeps n of every m weights, "
                              "so n must be at most m (e.g. n=2, m=4)")
        check_range(name, "calibration_batches", self.calibration_batches, 1, integer=True)

    def requires_data(self) -> bool:
        """Taylor and movement importance need calibration batches."""
        return self.importance in ("taylor", "movement")


@register("prune", "structured")
@dataclass(frozen=True, kw_only=True)
class StructuredPruning(Config):
    """Remove whole channels, neurons and heads so that layers become smaller dense layers.

    Attributes:
        ratio: fraction (0-1) of the ``target`` to remove.
        importance: how a channel group is scored: "l1"/"l2" norm of all its coupled weights, "bn_scale"
            (|gamma| of its norm layers, network slimming), "taylor" (|w * dL/dw| on calibration data) or
            "random".
        target: what ``ratio`` counts: "channels" (of every prunable group), "params" or "flops" (measured).
        scope: "uniform" removes the same fraction from every group; "global" ranks all groups together.
        round_to: kept channel counts are rounded to a multiple of this (8 suits SIMD kernels).
        max_layer_ratio: no group loses more than this fraction of its channels.
        ignore: layers (names, globs, "re:" regexes or type names) whose output channels are never removed.
        steps: prune in this many equal steps, BatchNorm statistics re-estimated after each (fine-tuning between
            steps: a recipe of prune and finetune stages, see docs/structured-pruning.md).
        calibration_batches: batches of data used for Taylor importance and BatchNorm recalibration.
        recalibrate_bn: when data is given, re-estimate BatchNorm running statistics on it after each step
            (removing a layer's input channels shifts the statistics its BatchNorm saw).

    Example:
        >>> import slimtorch as st, torch
        >>> model = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Linear(32, 2))
        >>> st.prune(model, st.StructuredPruning(ratio=0.5), example_inputs=torch.randn(1, 8))[0]
        Linear(in_features=8, out_features=16, bias=True)
    """

    ratio: float = 0.5
    importance: Importance = "l1"
    target: Literal["channels", "params", "flops"] = "channels"
    scope: Literal["uniform", "global"] = "uniform"
    round_to: int = 1
    max_layer_ratio: float = 0.9
    ignore: tuple[str, ...] = ()
    steps: int = 1
    calibration_batches: int = 8
    recalibrate_bn: bool = True

    removed: ClassVar[dict[str, str]] = {
        "finetune_epochs": "fine-tune in a stage of its own after the prune stage (recipe: `- finetune: {epochs: N}`; "
                           "Python: st.finetune(model, data=..., teacher=..., epochs=N))"}

    def __post_init__(self) -> None:
        super().__post_init__()
        name = type(self).__name__
        check_range(name, "ratio", self.ratio, 0, 1, hi_open=True)
        check_range(name, "round_to", self.round_to, 1, integer=True)
        check_range(name, "max_layer_ratio", self.max_layer_ratio, 0, 1, hi_open=True)
        check_range(name, "steps", self.steps, 1, integer=True)
        check_range(name, "calibration_batches", self.calibration_batches, 1, integer=True)
        if any(not isinstance(p, str) for p in self.ignore):
            raise ConfigError(f"{name}.ignore={self.ignore!r} must be a list of layer-name patterns")

    def requires_data(self) -> bool:
        """Taylor importance needs data."""
        return self.importance == "taylor"


@register("prune", "layers")
@dataclass(frozen=True, kw_only=True)
class LayerPruning(Config):
    """Remove ``num_layers`` whole blocks (residual blocks, transformer layers).

    Attributes:
        num_layers: how many blocks to remove.
        candidates: patterns (names, globs, "re:" regexes, type names) of removable blocks; empty means every
            member of an ``nn.ModuleList``/``nn.Sequential`` (or, failing that, every direct child) whose output
            has its input's shape.
        metric: "cosine" removes the blocks whose output is most similar to their input (one pass);
            "output" removes, one by one, the blocks whose removal changes the model's output least
            (one pass per candidate).
        calibration_batches: batches of data used to score blocks (example_inputs when no data is given).
    """

    num_layers: int = 1
    candidates: tuple[str, ...] = ()
    metric: Literal["cosine", "output"] = "cosine"
    calibration_batches: int = 4

    def __post_init__(self) -> None:
        super().__post_init__()
        name = type(self).__name__
        check_range(name, "num_layers", self.num_layers, 1, integer=True)
        check_range(name, "calibration_batches", self.calibration_batches, 1, integer=True)


@dataclass(frozen=True, kw_only=True)
class _Scheduled(Config):
    """Fields shared by the schedules (see the subclasses)."""

    sparsity: float = 0.9
    importance: Literal["l1", "l2", "random", "taylor", "movement"] = "l1"
    scope: Literal["global", "layer"] = "global"
    include: tuple[str, ...] | None = None
    exclude: tuple[str, ...] = ()
    prune_head: bool = False
    lr: float = 1e-3
    distill: bool = True
    max_batches: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        name = type(self).__name__
        check_range(name, "sparsity", self.sparsity, 0, 1, hi_open=True)
        check_range(name, "lr", self.lr, 0, lo_open=True)
        if self.max_batches is not None:
            check_range(name, "max_batches", self.max_batches, 1, integer=True)

    def requires_data(self) -> bool:
        """Schedules fine-tune, so they need labelled training data."""
        return True

    def pruning(self, sparsity: float) -> UnstructuredPruning:
        """The one-shot config of one pruning step at ``sparsity``."""
        return UnstructuredPruning(sparsity=sparsity, importance=self.importance, scope=self.scope,
                                   include=self.include, exclude=self.exclude, prune_head=self.prune_head)


@register("prune", "iterative")
@dataclass(frozen=True, kw_only=True)
class IterativePruning(_Scheduled):
    """Prune a fraction, fine-tune, repeat, until ``sparsity`` is reached.

    Attributes:
        sparsity: final fraction (0-1) of zero weights.
        rounds: number of prune + fine-tune rounds.
        epochs_per_round: fine-tuning epochs after each pruning step.
        importance, scope, include, exclude, prune_head: as in ``UnstructuredPruning``.
        lr: fine-tuning learning rate.
        distill: distill from the model as it was before pruning.
        max_batches: cap on batches per fine-tuning epoch.
    """

    rounds: int = 3
    epochs_per_round: int = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        check_range(type(self).__name__, "rounds", self.rounds, 1, integer=True)
        check_range(type(self).__name__, "epochs_per_round", self.epochs_per_round, 0, integer=True)


@register("prune", "gradual")
@dataclass(frozen=True, kw_only=True)
class GradualPruning(_Scheduled):
    """Gradual pruning during fine-tuning along the cubic schedule of Zhu and Gupta (2017).

    Attributes:
        sparsity: final fraction (0-1) of zero weights.
        initial_sparsity: sparsity at the first pruning step.
        epochs: fine-tuning epochs in all (pruning happens in the first ``end_fraction`` of them).
        frequency: prune every this many optimizer steps.
        end_fraction: share (0-1] of the training steps over which the sparsity ramps up.
        importance: "l1"/"l2" magnitude of the current weights, "movement" (-w * dL/dw accumulated over the
            fine-tuning steps), "random" or "taylor" (|w * g| of the latest step).
        scope, include, exclude, prune_head: as in ``UnstructuredPruning``.
        lr, distill, max_batches: fine-tuning settings.
    """

    initial_sparsity: float = 0.0
    epochs: int = 3
    frequency: int = 10
    end_fraction: float = 0.75

    def __post_init__(self) -> None:
        super().__post_init__()
        name = type(self).__name__
        check_range(name, "initial_sparsity", self.initial_sparsity, 0, self.sparsity)
        check_range(name, "epochs", self.epochs, 1, integer=True)
        check_range(name, "frequency", self.frequency, 1, integer=True)
        check_range(name, "end_fraction", self.end_fraction, 0, 1, lo_open=True)
