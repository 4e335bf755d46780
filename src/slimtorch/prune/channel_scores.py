"""Channel scores for structured pruning, as pure functions on tensors, and the data passes they need.

A group's score for channel ``c`` sums, over every coupled parameter (a conv's filter, the next BatchNorm's
scale, each consumer's input slice), the norm of the entries that hold ``c``: :func:`dim_scores` scores the
entries of one parameter dim and :func:`to_channels` maps them to the group's channels through the dim's label.
:func:`keep_count` and :func:`choose_channels` turn scores into the kept channels; :func:`taylor_grads` and
:func:`recalibrate_batchnorm` run the calibration data.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from slimtorch.data import as_loader, call, first_tensor, split_batch
from slimtorch.errors import ConfigError, DataError
from slimtorch.graph.groups import ChannelGraph, Group


def dim_scores(weight: torch.Tensor, dim: int, norm: Literal["l1", "l2"] = "l1") -> torch.Tensor:
    """Per-slice norm of ``weight`` along ``dim``: entry i scores ``||weight.select(dim, i)||``.

    ``l2`` returns squared sums so that coupled weights add up before the square root.
    """
    w = weight.detach().float().movedim(dim, 0).reshape(weight.shape[dim], -1)
    return w.abs().sum(1) if norm == "l1" else w.pow(2).sum(1)


def to_channels(entry_scores: torch.Tensor, label: tuple, space: int, size: int) -> torch.Tensor:
    """Sum per-entry scores of one parameter dim into per-channel scores of ``space`` (length ``size``)."""
    out = torch.zeros(size)
    pos = 0
    for s, lo, hi, f in label:
        n = int((hi - lo) * f)
        if s == space:
            part = entry_scores[pos:pos + n]
            if f >= 1:
                out[lo:hi] += part.reshape(hi - lo, int(f)).sum(1)
            else:  # one entry per head: every channel of the head gets the head's score
                out[lo:hi] += part.repeat_interleave(f.denominator)
        pos += n
    return out


def keep_count(size: int, remove_fraction: float, *, step: int, max_ratio: float) -> int:
    """Channels a group of ``size`` keeps: ``size * (1 - remove_fraction)`` rounded to a multiple of ``step``,
    at least ``size * (1 - max_ratio)`` and at least one step."""
    # rounded before the ceiling: 1 - 0.7 is 0.30000000000000004, and 10 channels must keep 3, not 4
    floor = max(step, math.ceil(round(size * (1 - max_ratio) / step, 9)) * step)
    kept = round(size * (1 - remove_fraction) / step) * step
    return int(min(size, max(floor, kept)))


def choose_channels(scores: torch.Tensor, kept: int, *, block: int = 1, groups: int = 1) -> torch.Tensor:
    """The ``kept`` best channels (sorted indices), taken in whole blocks and evenly across ``groups`` parts."""
    units = scores.reshape(groups, -1, block).sum(-1)  # (groups, units per group)
    per_group = kept // (block * groups)
    best = units.topk(per_group, dim=1).indices.sort(dim=1).values  # (groups, per_group)
    base = torch.arange(groups)[:, None] * units.shape[1]
    unit_idx = (best + base).reshape(-1)
    return (unit_idx[:, None] * block + torch.arange(block)[None, :]).reshape(-1)


def slimming_regularizer(strength: float = 1e-4):
    """Network-slimming sparsity on BatchNorm scales, as an ``on_step`` callback for ``st.finetune``.

    After every optimizer step each BatchNorm ``gamma`` is shrunk toward zero by ``strength`` (the proximal
    step of an L1 penalty), so unimportant channels get small scales that ``importance="bn_scale"`` removes.

    Args:
        strength: L1 shrink per step (in units of gamma).

    Returns:
        ``on_step(model)``.

    Example:
        >>> st.finetune(model, data, on_step=slimming_regularizer(1e-4))  # doctest: +SKIP
    """
    if strength < 0:
        raise ConfigError(f"slimming strength={strength!r} must be >= 0")

    def on_step(model: nn.Module) -> None:
        with torch.no_grad():
            for m in model.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.weight is not None:
                    m.weight.copy_(m.weight.sign() * (m.weight.abs() - strength).clamp_min(0))

    return on_step


# ---------------------------------------------------------------- scoring a graph


def group_scores(model: nn.Module, graph: ChannelGraph, group: Group, importance: str,
                 grads: dict[str, torch.Tensor] | None, gen: torch.Generator) -> torch.Tensor:
    """Per-channel importance of one group from all its coupled parameters."""
    if importance == "random":
        return torch.rand(group.size, generator=gen)
    params = dict(model.named_parameters())
    total = torch.zeros(group.size)
    used = False
    for m in group.members:
        w = params.get(m.param)
        if w is None:  # buffers (running statistics) carry no importance
            continue
        if importance == "bn_scale":
            if not (w.dim() == 1 and m.param.endswith(".weight") and _is_norm(model, m.param)):
                continue
            entry = w.detach().abs().float()
        elif importance == "taylor":
            g = (grads or {}).get(m.param)
            if g is None:
                continue
            entry = dim_scores(w.detach() * g, m.dim, "l1")
        else:
            entry = dim_scores(w, m.dim, importance)
        total += to_channels(entry, m.label, group.id, group.size)
        used = True
    if not used:  # no norm layer (bn_scale) or no gradient: fall back to the weights' L1 norm
        return group_scores(model, graph, group, "l1", None, gen)
    return total.sqrt() if importance == "l2" else total


def _is_norm(model: nn.Module, pname: str) -> bool:
    owner = model.get_submodule(pname.rpartition(".")[0])
    return isinstance(owner, nn.modules.batchnorm._NormBase | nn.LayerNorm | nn.GroupNorm)


def taylor_grads(model: nn.Module, data: Any, batches: int) -> dict[str, torch.Tensor]:
    """Accumulated gradients of the task loss (cross-entropy with labels, else the output's mean square)."""
    if data is None:
        raise DataError("importance='taylor' needs data=<calibration batches, labelled or not>")
    was = model.training
    model.eval()
    model.zero_grad(set_to_none=True)
    seen = 0
    for batch in _batches(data, batches):
        inputs, target = split_batch(batch)
        out = first_tensor(call(model, inputs))
        if target is not None and out.dim() == 2 and target.dtype == torch.long:
            loss = F.cross_entropy(out, target)
        else:
            loss = out.float().pow(2).mean()
        loss.backward()
        seen += 1
    if not seen:
        raise DataError("the calibration data gave no batch for Taylor importance")
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    model.train(was)
    return grads


def recalibrate_batchnorm(model: nn.Module, data: Any, batches: int) -> int:
    """Re-estimate every BatchNorm's running mean and variance on ``batches`` batches (cumulative average).

    Returns:
        The number of batches used (0 when the model has no BatchNorm).
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not norms:
        return 0
    was = model.training
    saved = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average over the calibration batches
    model.train()
    seen = 0
    with torch.no_grad():
        for batch in _batches(data, batches):
            call(model, split_batch(batch)[0])
            seen += 1
    for m, momentum in zip(norms, saved, strict=True):
        m.momentum = momentum
    model.train(was)
    return seen


def _batches(data: Any, n: int):
    loader = getattr(data, "calibration", None) or as_loader(data)
    for i, batch in enumerate(loader):
        if i >= n:
            break
        yield batch
