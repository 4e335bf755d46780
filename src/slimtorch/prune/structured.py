"""Structured pruning: physically remove channels, filters, neurons and attention heads through the graph.

The config, the plan (how many channels each group keeps, uniform or global, rounded, capped per layer, found
for a channel, parameter or FLOP target), and the handler that wires tracing, scoring
(:mod:`slimtorch.prune.channel_scores`), planning, surgery, verification and iterative fine-tuning together.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
from torch import nn

from slimtorch._log import logger
from slimtorch.data import call, iter_inputs
from slimtorch.errors import DataError, UnsupportedModelError
from slimtorch.graph.attention import convert_attention
from slimtorch.graph.explain import explain, warn_untouched
from slimtorch.graph.groups import ChannelGraph, Group, build
from slimtorch.graph.surgery import kept_entries, shrink
from slimtorch.graph.widths import config_mismatches
from slimtorch.handlers import handler
from slimtorch.prune.channel_scores import (
    choose_channels,
    group_scores,
    keep_count,
    recalibrate_batchnorm,
    taylor_grads,
)
from slimtorch.prune.config import StructuredPruning
from slimtorch.select import matches

# ---------------------------------------------------------------- planning


def plan(groups: list[Group], scores: dict[int, torch.Tensor], fraction: float, cfg: StructuredPruning
         ) -> dict[int, torch.Tensor]:
    """Kept channels per group for removing ``fraction`` of the channels (uniform or global)."""
    steps = {g.id: _step(g, cfg.round_to) for g in groups}
    remove = {g.id: fraction for g in groups}
    if cfg.scope == "global" and groups and fraction > 0:
        pooled = torch.cat([scores[g.id] / (scores[g.id].mean() + 1e-12) for g in groups])
        cut = pooled.kthvalue(max(1, int(fraction * pooled.numel()))).values
        remove = {g.id: float((scores[g.id] / (scores[g.id].mean() + 1e-12) <= cut).float().mean()) for g in groups}
    keep = {}
    for g in groups:
        kept = keep_count(g.size, remove[g.id], step=steps[g.id], max_ratio=cfg.max_layer_ratio)
        keep[g.id] = choose_channels(scores[g.id], kept, block=g.block, groups=g.groups)
    return keep


def _step(g: Group, round_to: int) -> int:
    base = g.block * g.groups
    step = math.lcm(base, round_to)
    return step if step <= g.size // 2 or step == base else base


def eligible(model: nn.Module, graph: ChannelGraph, cfg: StructuredPruning, select: Any) -> list[Group]:
    """Prunable groups whose producing layers are selected and not ignored."""
    out = []
    for g in graph.prunable():
        mods = [(p, model.get_submodule(p)) for p in g.producers if p]
        if any(matches(n, m, pat) for n, m in mods for pat in cfg.ignore):
            continue
        if select is not None and not any(matches(n, m, pat) for n, m in mods for pat in select):
            continue
        out.append(g)
    return out


def _measure(model: nn.Module, target: str, example_inputs: Any) -> float:
    if target == "params":
        return float(sum(p.numel() for p in model.parameters()))
    from slimtorch.measure.flops import count_flops

    return float(count_flops(model, example_inputs))


def prune_once(model: nn.Module, cfg: StructuredPruning, example_inputs: Any, *, data: Any = None,
               select: Any = None, seed: int = 0, goal: float | None = None, fraction: float = 0.0) -> dict:
    """One pruning step: trace, score, plan (for ``fraction`` of channels, or to reach ``goal`` params/FLOPs),
    cut. Returns a summary (groups pruned, channels before/after)."""
    graph = build(model, example_inputs)
    warn_untouched(graph)
    groups = eligible(model, graph, cfg, select)
    if not groups:
        raise UnsupportedModelError(
            "structured pruning found no channel group it can remove; the groups are:\n" + explain(graph)
            + "\nremove 'ignore'/'select' patterns or check the warnings above")
    gen = torch.Generator().manual_seed(seed)
    grads = taylor_grads(model, data, cfg.calibration_batches) if cfg.importance == "taylor" else None
    scores = {g.id: group_scores(model, graph, g, cfg.importance, grads, gen) for g in groups}
    if goal is None:
        keep = plan(groups, scores, fraction, cfg)
    else:
        keep = _search(model, graph, groups, scores, cfg, example_inputs, goal)
    shrink(model, graph, keep)
    before = sum(g.size for g in groups)
    after = sum(int(keep[g.id].numel()) for g in groups)
    return {"groups": len(groups), "channels_before": before, "channels_after": after}


def _search(model, graph, groups, scores, cfg, example_inputs, goal) -> dict[int, torch.Tensor]:
    """Bisect the channel fraction until the predicted params/FLOPs reach ``goal``.

    Parameter counts are exact from the planned shapes; FLOPs are the measured total with every conv and
    linear rescaled to its planned weight shape (other ops, e.g. attention matmuls, kept as measured).
    """
    cost = CostModel(model, graph, cfg.target, _measure(model, cfg.target, example_inputs))
    lo, hi = 0.0, 1.0
    best = plan(groups, scores, 0.0, cfg)
    for _ in range(20):
        mid = (lo + hi) / 2
        keep = plan(groups, scores, mid, cfg)
        if cost(keep) <= goal:
            best, hi = keep, mid
        else:
            lo = mid
    if hi == 1.0:
        best = plan(groups, scores, 1.0, cfg)
        logger.warning("structured pruning: the %s target cannot be reached within max_layer_ratio=%s; "
                       "pruned as far as allowed", cfg.target, cfg.max_layer_ratio)
    return best


class CostModel:
    """Params or FLOPs of the model after a keep plan, without cutting anything."""

    def __init__(self, model: nn.Module, graph: ChannelGraph, target: str, measured: float) -> None:
        self.graph = graph
        self.target = target
        self.shapes = {}
        for name, p in model.named_parameters():  # tied parameters are listed (and counted) once
            self.shapes[name] = tuple(p.shape)
        self.layers = []  # (weight name, output positions) of every conv/linear call
        tr = graph.trace
        for op in tr.ops:
            refs = op.refs()
            if op.name in {"linear", "conv1d", "conv2d", "conv3d"} and len(refs) > 1 and refs[1] in tr.params:
                out = tr.shapes[op.outputs[0]]
                channels = out[-1] if op.name == "linear" else out[1]
                self.layers.append((tr.params[refs[1]], math.prod(out) // max(channels, 1)))
        self.rest = measured - self._count({}) if target == "flops" else 0.0

    def _shape(self, name: str, keep) -> tuple[int, ...]:
        shape = list(self.shapes.get(name, ()))
        for m in self.graph.params.get(name, ()):
            shape[m.dim] = int(kept_entries(m.label, keep).numel())
        grouped = self.graph.grouped.get(name)
        if grouped and grouped[1] in keep:
            shape[1] = int(keep[grouped[1]].numel()) // grouped[0]
        return tuple(shape)

    def _count(self, keep) -> float:
        if self.target == "params":
            return float(sum(math.prod(self._shape(n, keep)) for n in self.shapes))
        return float(sum(2 * pos * math.prod(self._shape(n, keep)) for n, pos in self.layers))

    def __call__(self, keep) -> float:
        """Predicted params or FLOPs after keeping ``keep``."""
        return self._count(keep) + self.rest


def _output_shapes(model: nn.Module, example_inputs: Any) -> list[tuple[int, ...]]:
    from slimtorch.graph.trace import output_tensors

    was = model.training
    model.eval()
    with torch.no_grad():
        out = call(model, example_inputs)
    model.train(was)
    return [tuple(t.shape) for t in output_tensors(out)]


@handler(StructuredPruning)
def apply_structured(model: nn.Module, config: StructuredPruning, *, data: Any = None, example_inputs: Any = None,
                     select: Any = None, seed: int = 0) -> nn.Module:
    """Handler of ``st.prune(model, StructuredPruning(...))``: prune in place (width attributes and config fields
    follow, :mod:`slimtorch.graph.widths`) in ``config.steps`` steps, and verify output shapes after each. A
    warning names the parameters a Hugging Face ``model.config`` would now build with other shapes.

    Raises:
        DataError: no example_inputs and no data to take them from; Taylor importance without data.
        UnsupportedModelError: nothing can be pruned, or the pruned model no longer runs (the model is restored).
    """
    if example_inputs is None:
        if data is None:
            raise DataError("structured pruning traces the model: pass example_inputs=<one batch> (or data=)")
        example_inputs = next(iter_inputs(data, 1))
    backup = copy.deepcopy(model)
    shapes = _output_shapes(model, example_inputs)
    convert_attention(model)
    base = _measure(model, config.target, example_inputs) if config.target != "channels" else 0.0
    try:
        for step in range(1, config.steps + 1):
            done, now = config.ratio * (step - 1) / config.steps, config.ratio * step / config.steps
            if config.target == "channels":
                summary = prune_once(model, config, example_inputs, data=data, select=select, seed=seed + step,
                                     fraction=1 - (1 - now) / (1 - done))
            else:
                summary = prune_once(model, config, example_inputs, data=data, select=select, seed=seed + step,
                                     goal=base * (1 - now))
            got = _output_shapes(model, example_inputs)
            if got != shapes:
                raise UnsupportedModelError(f"the pruned model's outputs have shapes {got}, expected {shapes}")
            if config.recalibrate_bn and data is not None:
                recalibrate_batchnorm(model, data, config.calibration_batches)
            logger.info("structured pruning step %d/%d: %d groups, %d -> %d channels", step, config.steps,
                        summary["groups"], summary["channels_before"], summary["channels_after"])
    except (RuntimeError, ValueError, IndexError) as err:
        model.__dict__.clear()
        model.__dict__.update(backup.__dict__)
        raise UnsupportedModelError(
            f"the model does not run after structured pruning ({type(err).__name__}: {err}); it was restored. "
            "Exclude the failing layers with ignore=[...] (a forward that hard-codes a width, e.g. "
            "C // n_head, cannot follow)") from None
    except UnsupportedModelError:
        model.__dict__.clear()
        model.__dict__.update(backup.__dict__)
        raise
    mismatched = config_mismatches(model)
    if mismatched:
        logger.warning("structured pruning: model.config no longer describes the pruned %s (%s); save_pretrained/"
                       "from_pretrained cannot rebuild it, st.save/st.load can. For one config: scope='uniform', no "
                       "ignore/select that spares some layers, and round_to=<head width> (BERT-style configs derive "
                       "the head width as hidden_size / num_attention_heads)", type(model).__name__,
                       "; ".join(mismatched[:4]))
    return model
