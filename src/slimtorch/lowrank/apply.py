"""``slimtorch.decompose(model, LowRank(...))``: choose layers, choose ranks, swap in factorized layers."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn

from slimtorch._log import logger, progress
from slimtorch.data import iter_inputs
from slimtorch.errors import ConfigError, DataError
from slimtorch.graph.surgery import replace_layer
from slimtorch.handlers import handler
from slimtorch.layer_kinds import as_plain, layer_kind
from slimtorch.lowrank.calibrate import record, reference_outputs, sensitivity
from slimtorch.lowrank.config import LowRank
from slimtorch.lowrank.layers import Layer, Rank
from slimtorch.lowrank.modules import _Factorized
from slimtorch.lowrank.rank import RATIO_GRID, Option, allocate, bisect_level
from slimtorch.select import last_linear, swappable
from slimtorch.summary import StepSummary
from slimtorch.summary import record as record_summary


def _method_for(module: nn.Module, method: str) -> str:
    if isinstance(module, nn.Linear) or module.kernel_size == (1, 1):
        return "svd"  # a matrix: Tucker-2 of it is its SVD, a spatial split has nothing to split
    return "tucker" if method == "auto" else method


def choose_layers(model: nn.Module, config: LowRank, include: Sequence[str] | None) -> tuple[list[Layer], dict]:
    """The layers to factorize and, for the others considered, why they are left alone.

    GPT-2's ``Conv1D`` is factorized as the Linear it computes, a TF-"same" padded convolution as its
    padding-0 Conv2d (the factorized layer pads, ``same_pad``); a subclass with a ``forward`` of its own that
    slimtorch does not know is left alone (see :mod:`slimtorch.layer_kinds`).

    Returns:
        ``(layers, skipped)`` with ``skipped`` mapping a layer name to the reason.
    """
    exclude = list(config.exclude)
    head = last_linear(model) if config.keep_head else None
    inside = [name + "." for name, m in model.named_modules() if isinstance(m, _Factorized)]
    layers = []
    chosen, skipped = swappable(model, [nn.Linear, nn.Conv2d], include=include, exclude=exclude)
    skipped = {n: why for n, why in skipped.items() if not any(n.startswith(p) for p in inside)}
    for name, module in chosen:
        if name == head:
            skipped[name] = "the classifier head (keep_head=True)"
        elif any(name.startswith(p) for p in inside):
            continue  # already a factor of a low-rank layer
        elif isinstance(module, nn.Conv2d) and module.groups != 1:
            skipped[name] = f"a grouped convolution (groups={module.groups}) has no dense matrix to factorize"
        else:
            plain, same_pad = as_plain(module), layer_kind(module).kind == "same_pad"
            layers.append(Layer(name, plain, _method_for(plain, config.method), source=module, same_pad=same_pad))
    return layers, skipped


def _calibration(config: LowRank, data: Any, example_inputs: Any) -> list[Any]:
    if data is not None:
        batches = list(iter_inputs(data, config.calibration_batches, split="calibration"))
        if batches:
            return batches
    if example_inputs is not None:
        return [example_inputs]
    return []


def _budget(config: LowRank, model: nn.Module, layers: list[Layer], batches: list[Any]) -> float:
    metric = config.target_metric
    dense = sum(layer.dense_cost(metric) for layer in layers)
    if config.target_scope == "layers":
        return dense / config.target
    if metric == "params":
        from slimtorch.measure.size import count_params

        total = count_params(model)[0]
    else:
        from slimtorch.measure.flops import count_flops

        total = count_flops(model, batches[0])
    budget = dense - (total - total / config.target)
    if budget <= 0:
        raise ConfigError(
            f"LowRank.target={config.target} on the whole model's {metric} is unreachable: the chosen layers hold "
            f"{dense:.0f} of {total:.0f}; lower the target, use target_scope='layers' or select more layers"
        )
    return budget


def _options(layer: Layer) -> list[Rank]:
    """Candidate ranks at the grid's fractions of the full rank that make the layer cheaper."""
    ranks = []
    for ratio in RATIO_GRID:
        r = layer.rank_at_ratio(ratio)
        if r not in ranks and layer.pays_off(r):
            ranks.append(r)
    return ranks


def _allocate(model: nn.Module, config: LowRank, layers: list[Layer], batches: list[Any]) -> dict[str, Rank | None]:
    metric = config.target_metric
    budget = _budget(config, model, layers, batches)
    dense = {layer.name: layer.dense_cost(metric) for layer in layers}

    def level_cost(rank_at) -> float:
        total = 0.0
        for layer in layers:
            r = rank_at(layer)
            total += layer.cost(r, metric) if layer.pays_off(r) else dense[layer.name]
        return total

    try:
        if config.allocation == "sensitivity":
            reference = reference_outputs(model, batches)
            options = {}
            for layer in progress(layers, "rank sensitivity"):
                errors = sensitivity(model, layer, _options(layer), batches, reference)
                options[layer.name] = [Option(r, layer.cost(r, metric), e) for r, e in errors.items()]
            picks = allocate(options, dense, budget)
            return {name: None if opt is None else opt.rank for name, opt in picks.items()}
        if config.allocation == "energy":
            level = bisect_level(lambda e: level_cost(lambda lay: lay.rank_at_energy(e)), budget, 1e-9, 1.0)
            return {lay.name: lay.rank_at_energy(level) for lay in layers}
        level = bisect_level(lambda q: level_cost(lambda lay: lay.rank_at_ratio(q)), budget, 1e-9, 1.0)
        return {lay.name: lay.rank_at_ratio(level) for lay in layers}
    except ValueError as err:
        raise ConfigError(
            f"LowRank.target={config.target} ({metric}, scope {config.target_scope}) is unreachable: {err}; "
            "lower the target or include more layers"
        ) from None


def _ranks(model: nn.Module, config: LowRank, layers: list[Layer], batches: list[Any]) -> dict[str, Rank | None]:
    if config.rank is not None:
        return {lay.name: lay.clip(config.rank) for lay in layers}
    if config.rank_ratio is not None:
        return {lay.name: lay.rank_at_ratio(config.rank_ratio) for lay in layers}
    if config.energy is not None:
        return {lay.name: lay.rank_at_energy(config.energy) for lay in layers}
    return _allocate(model, config, layers, batches)


@handler(LowRank)
def decompose_lowrank(
    model: nn.Module, config: LowRank, *, data: Any = None, example_inputs: Any = None,
    select: Sequence[str] | None = None, seed: int = 0,
) -> nn.Module:
    """Replace the chosen Linear/Conv2d layers of ``model`` by low-rank factorizations, in place.

    The handler behind ``slimtorch.decompose(model, LowRank(...))``. The decisions (layer, method, rank,
    weights before and after, or why a layer was left alone) are kept in the step's summary,
    ``slimtorch.summary.last_summary(model).details["layers"]``, a list of dicts.

    Args:
        model: the model (changed in place; its train/eval mode is kept).
        config: the :class:`LowRank` settings.
        data: calibration batches: a loader, a list of batches or zoo data (its ``calibration`` loader is used).
        example_inputs: inputs for one forward when there is no data (layer sizes for FLOPs).
        select: include patterns restricting the layers (see ``slimtorch.select``).
        seed: unused (the factorization is deterministic); the signature every handler shares.

    Returns:
        The same model.

    Example:
        >>> import slimtorch as st, torch
        >>> model = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.ReLU(), torch.nn.Linear(256, 10))
        >>> st.decompose(model, st.LowRank(rank_ratio=0.25))[0]
        LowRankLinear(
          (first): Linear(in_features=64, out_features=16, bias=False)
          (second): Linear(in_features=16, out_features=256, bias=True)
        )

    Raises:
        DataError: data-aware factors or sensitivity allocation without calibration data.
        ConfigError: a target that cannot be met by the chosen layers.
    """
    layers, skipped = choose_layers(model, config, select)
    batches = _calibration(config, data, example_inputs)
    needs_data = config.data_aware or (config.target is not None and config.allocation == "sensitivity")
    if needs_data and not batches:
        raise DataError("LowRank with data_aware=True or target with allocation='sensitivity' needs calibration "
                        "data: pass data=<loader or zoo data> (or example_inputs)")
    if config.target_metric == "flops" and config.target is not None and not batches:
        raise DataError("LowRank(target_metric='flops') counts FLOPs on a real forward: pass example_inputs or data")
    was_training = model.training
    model.eval()  # calibration forwards must not update BatchNorm statistics
    try:
        if batches:
            record(model, layers, batches[:1] if not config.data_aware else batches, moments=config.data_aware)
        ranks = _ranks(model, config, layers, batches)
        decisions = [{"name": n, "status": "left dense", "reason": why} for n, why in skipped.items()]
        for layer in progress(layers, "factorizing"):
            rank = ranks.get(layer.name)
            row: dict[str, Any] = {"name": layer.name, "method": layer.method,
                                   "params_before": int(layer.weight.numel())}
            if rank is None:
                decisions.append({**row, "status": "left dense", "reason": "the allocation kept it dense"})
            elif not layer.pays_off(rank):
                decisions.append({**row, "status": "left dense", "rank": rank,
                                  "reason": "rank at or above break-even (the factors would cost more)"})
            else:
                replace_layer(model, layer.name, layer.build(rank))
                decisions.append({**row, "status": "decomposed", "rank": rank,
                                  "params_after": int(layer.cost(rank, "params"))})
    finally:
        model.train(was_training)
    for row in decisions:
        logger.info("low-rank %s: %s %s", row["name"], row["status"], row.get("rank", row.get("reason", "")))
    record_summary(model, StepSummary(type(config).__name__,
                                      tuple(r["name"] for r in decisions if r["status"] == "decomposed"), skipped,
                                      details={"layers": decisions}))
    return model
