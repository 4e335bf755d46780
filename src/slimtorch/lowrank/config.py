"""The ``LowRank`` config: which layers to factorize, how, and how ranks are chosen."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from slimtorch.config import Config, check_range, register
from slimtorch.errors import ConfigError

RANK_FIELDS = ("rank", "rank_ratio", "energy", "target")


@register("decompose", "lowrank")
@dataclass(frozen=True, kw_only=True)
class LowRank(Config):
    """Low-rank factorization of Linear and Conv2d layers. Set exactly one of ``rank``, ``rank_ratio``,
    ``energy`` or ``target``.

    Attributes:
        rank: a fixed rank for every layer (Tucker-2: for both modes), clipped to each layer's full rank.
        rank_ratio: a fraction 0-1 of each layer's full rank (``min(out, in)`` for SVD).
        energy: per layer, the smallest rank keeping this fraction 0-1 of the squared singular values.
        target: the compression ratio (> 1, e.g. 2.0 = half) of ``target_metric`` to reach, spread over layers
            as ``allocation`` says.
        target_metric: "params" (weights) or "flops" (multiply-adds of one forward on the example inputs).
        target_scope: "model" (the ratio applies to the whole model) or "layers" (to the selected layers only).
        allocation: how ``target`` is spread: "sensitivity" (per-layer output error on calibration data for each
            candidate rank, then the least total error that fits), "energy" (one spectral-energy fraction for all
            layers) or "uniform" (one rank ratio for all layers).
        method: "svd" (two factors; for convolutions a k x k conv to the rank then a 1x1 conv), "tucker"
            (Tucker-2 for k x k convolutions), "spatial_svd" (k x 1 then 1 x k) or "auto" (SVD for linear and
            1x1 layers, Tucker-2 for k x k convolutions). Linear and 1x1 layers always use SVD.
        data_aware: factorize weighted by the inputs' second moments on calibration data, minimizing output
            error instead of weight error (needs data).
        calibration_batches: batches of data used for second moments and sensitivities.
        keep_head: leave the model's last Linear (the classifier) dense.
        exclude: patterns of layers to leave alone (see ``slimtorch.select``).

    Example:
        >>> import slimtorch as st
        >>> model, data = st.zoo.load("digits-mlp")
        >>> _ = st.decompose(model, st.LowRank(target=2.0, target_scope="layers"), data=data)
        >>> from slimtorch.summary import last_summary
        >>> [r["name"] for r in last_summary(model).details["layers"] if r["status"] == "decomposed"]
        ['fc2']
    """

    rank: int | None = None
    rank_ratio: float | None = None
    energy: float | None = None
    target: float | None = None
    target_metric: Literal["params", "flops"] = "params"
    target_scope: Literal["model", "layers"] = "model"
    allocation: Literal["sensitivity", "energy", "uniform"] = "sensitivity"
    method: Literal["auto", "svd", "tucker", "spatial_svd"] = "auto"
    data_aware: bool = False
    calibration_batches: int = 8
    keep_head: bool = True
    exclude: tuple[str, ...] = ()

    removed: ClassVar[dict[str, str]] = dict.fromkeys(
        ("finetune_epochs", "finetune_lr"),
        "fine-tune the factors in a stage of their own after the decompose stage (recipe: `- finetune: {epochs: N, "
        "lr: ...}`; Python: st.finetune(model, data=..., teacher=..., epochs=N))")

    def __post_init__(self) -> None:
        super().__post_init__()
        name = type(self).__name__
        given = [f for f in RANK_FIELDS if getattr(self, f) is not None]
        if len(given) != 1:
            raise ConfigError(
                f"{name}: set exactly one of {list(RANK_FIELDS)} to choose ranks, got {given or 'none'}; "
                "e.g. LowRank(energy=0.95) or LowRank(target=2.0)"
            )
        if self.rank is not None:
            check_range(name, "rank", self.rank, 1, integer=True)
        if self.rank_ratio is not None:
            check_range(name, "rank_ratio", self.rank_ratio, 0, 1, lo_open=True)
        if self.energy is not None:
            check_range(name, "energy", self.energy, 0, 1, lo_open=True)
        if self.target is not None:
            check_range(name, "target", self.target, 1, lo_open=True)
        check_range(name, "calibration_batches", self.calibration_batches, 1, integer=True)
        if not all(isinstance(p, str) for p in self.exclude):
            raise ConfigError(f"{name}.exclude={self.exclude!r} must be a list of layer-name patterns")

    def requires_data(self) -> bool:
        """Data is needed for data-aware factors and sensitivity allocation."""
        return self.data_aware or (self.target is not None and self.allocation == "sensitivity")
