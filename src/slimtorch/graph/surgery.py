"""Module surgery: shrink parameters to the kept channels of each group, fix layer attributes, fold conv-bn.

:func:`shrink` is the one place where weights are physically cut: every parameter dim of a
:class:`~slimtorch.graph.groups.ChannelGraph` keeps the entries of the kept channels, and the owning modules
(``nn.Linear``, ``nn.Conv*``, norms, embeddings, attention) get matching ``in_features``/``out_channels``/
``num_heads``... so they are ordinary, smaller torch layers; width attributes and config fields follow
(:mod:`slimtorch.graph.widths`). :func:`fold_conv_bn` folds a BatchNorm into the
convolution before it (a pure module operation that quantization reuses).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping

import torch
from torch import nn

from slimtorch.graph.groups import ChannelGraph
from slimtorch.graph.labels import Label, entries
from slimtorch.graph.widths import rewrite_widths
from slimtorch.io.manifest import describe, set_tracked_attr
from slimtorch.layer_kinds import layer_kind

logger = logging.getLogger(__name__)


def kept_entries(label: Label, keep: Mapping[int, torch.Tensor]) -> torch.Tensor:
    """Indices of a dim's entries that survive when each base space keeps the channels in ``keep``.

    Args:
        label: the dim's resolved label.
        keep: space id -> sorted 1-D LongTensor of kept channels (spaces not listed keep everything).

    Returns:
        A sorted 1-D LongTensor of entry indices.
    """
    out, pos = [], 0
    for space, lo, hi, f in label:
        n = entries((space, lo, hi, f))
        if space is None or space not in keep:
            out.append(torch.arange(pos, pos + n))
        else:
            chans = keep[space]
            chans = chans[(chans >= lo) & (chans < hi)] - lo
            if f >= 1:
                rep = int(f)
                idx = (chans[:, None] * rep + torch.arange(rep)[None, :]).reshape(-1)
            else:  # one entry per block of channels (a head): keep the entries whose first channel is kept
                block = f.denominator
                idx = torch.unique(chans // block)
            out.append(idx + pos)
        pos += n
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.long)


def shrink(model: nn.Module, graph: ChannelGraph, keep: Mapping[int, torch.Tensor]) -> list[str]:
    """Cut every parameter and buffer of ``model`` to the kept channels and fix the owning modules.

    Args:
        model: the model ``graph`` was built from (or a deep copy of it: parameters are found by name).
        graph: its channel graph.
        keep: group id -> sorted LongTensor of the channels to keep; groups not listed keep all.

    Returns:
        The names of the modules that changed.
    """
    keep = {k: v for k, v in keep.items() if v.numel() < _size(graph, k)}
    changed: dict[str, nn.Module] = {}
    before = {name: _shape_config(m) for name, m in model.named_modules()}
    owners: dict[int, list[tuple[str, nn.Module, str]]] = {}  # tied tensors: every module holding one
    for mname, module in model.named_modules(remove_duplicate=False):
        for attr, t in list(module._parameters.items()) + list(module._buffers.items()):
            if t is not None:
                owners.setdefault(id(t), []).append((mname, module, attr))
    for pname in set(graph.params) | set(graph.grouped):
        members = graph.params.get(pname, [])
        grouped = graph.grouped.get(pname)
        if not any(seg[0] in keep for m in members for seg in m.label) and not (grouped and grouped[1] in keep):
            continue
        owner_name, _, attr = pname.rpartition(".")
        owner = model.get_submodule(owner_name) if owner_name else model
        tensor = getattr(owner, attr)
        with torch.no_grad():
            new = tensor.detach()
            for m in members:
                new = new.index_select(m.dim, kept_entries(m.label, keep))
            if grouped and grouped[1] in keep:
                new = grouped_columns(new, grouped[0], keep[grouped[1]])
            new = new.clone()
        replacement = nn.Parameter(new, requires_grad=tensor.requires_grad) if isinstance(
            tensor, nn.Parameter) else None
        for mname, module, mattr in owners.get(id(tensor), [(owner_name, owner, attr)]):
            if replacement is not None:
                setattr(module, mattr, replacement)
            else:
                module.register_buffer(mattr, new, persistent=mattr not in module._non_persistent_buffers_set)
            changed[mname] = module
    for name, module in changed.items():
        _fix_attributes(module, before.get(name, {}))
    rewrite_widths(model, graph, keep)
    return sorted(changed)


def grouped_columns(weight: torch.Tensor, groups: int, kept_inputs: torch.Tensor) -> torch.Tensor:
    """Cut a grouped conv's weight ``(out, in/groups, k...)`` to the kept input channels, group by group.

    Every group must keep the same number of input channels (the planner guarantees it).
    """
    per_group = weight.shape[1]
    rows = weight.shape[0] // groups
    parts = []
    for a in range(groups):
        local = kept_inputs[(kept_inputs >= a * per_group) & (kept_inputs < (a + 1) * per_group)] - a * per_group
        parts.append(weight[a * rows:(a + 1) * rows].index_select(1, local))
    return torch.cat(parts)


def _size(graph: ChannelGraph, gid: int) -> int:
    return next((g.size for g in graph.groups if g.id == gid), 1 << 62)


def _shape_config(m: nn.Module) -> dict:
    if isinstance(m, nn.modules.conv._ConvNd):
        return {"in": m.in_channels, "out": m.out_channels, "groups": m.groups}
    return {}


SIZE_ATTRS = ("in_features", "out_features", "in_channels", "out_channels", "groups", "num_features",
              "normalized_shape", "num_channels", "embedding_dim")
_TORCH_LAYERS = (nn.Linear, nn.modules.conv._ConvNd, nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm,
                 nn.Embedding)


def _fix_attributes(m: nn.Module, old: dict) -> None:
    """Make a module's size attributes agree with its (cut) weights."""
    if isinstance(m, nn.Linear):
        m.out_features, m.in_features = m.weight.shape
    elif isinstance(m, nn.modules.conv._ConvNd):
        w = m.weight
        out_ch = w.shape[1] * m.groups if m.transposed else w.shape[0]
        if old and old["groups"] > 1 and old["groups"] == old["in"]:  # depthwise: groups follow the channels
            mult = old["out"] // old["in"]
            m.groups = m.in_channels = out_ch // mult
        elif m.transposed:
            m.in_channels = w.shape[0]
        else:
            m.in_channels = w.shape[1] * m.groups
        m.out_channels = out_ch
    elif isinstance(m, nn.modules.batchnorm._NormBase):
        ref = m.weight if m.weight is not None else m.running_mean
        m.num_features = ref.shape[0]
    elif isinstance(m, nn.LayerNorm) and m.weight is not None:
        m.normalized_shape = tuple(m.weight.shape)
    elif isinstance(m, nn.GroupNorm) and m.weight is not None:
        m.num_channels = m.weight.shape[0]
    elif isinstance(m, nn.Embedding):
        m.embedding_dim = m.weight.shape[1]
    elif hasattr(m, "resize_attributes"):
        m.resize_attributes()
    elif isinstance(getattr(m, "nf", None), int) and getattr(m, "weight", None) is not None:
        set_tracked_attr(m, "nf", int(m.weight.shape[1]))  # Hugging Face Conv1D: weight is (in, out)
    if isinstance(m, _TORCH_LAYERS) and describe(m) is None:
        # a subclass (timm's LayerNorm) is not rebuilt by st.load, which keeps the module: record its sizes
        for attr in SIZE_ATTRS:
            value = m.__dict__.get(attr)
            if isinstance(value, int | tuple):
                set_tracked_attr(m, attr, list(value) if isinstance(value, tuple) else value)


def fold_conv_bn(conv: nn.Conv1d | nn.Conv2d | nn.Conv3d, bn: nn.modules.batchnorm._BatchNorm) -> nn.Module:
    """Return a new convolution equal to ``bn(conv(x))`` in eval mode (BatchNorm folded into the filters).

    ``w' = w * gamma / sqrt(var + eps)`` per output channel and ``b' = (b - mean) * gamma / sqrt(var + eps) + beta``.
    Neither input module is changed.

    Args:
        conv: a non-transposed convolution.
        bn: the BatchNorm that reads its output, with running statistics.

    Returns:
        The folded convolution (always with a bias).

    Raises:
        ValueError: the BatchNorm has no running statistics or does not match the conv's channels.
    """
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError(f"{type(bn).__name__} has no running statistics to fold")
    if bn.num_features != conv.out_channels or conv.transposed:
        raise ValueError("the BatchNorm does not follow the convolution's output channels")
    fused = copy.deepcopy(conv)
    with torch.no_grad():
        scale = (bn.weight if bn.weight is not None else torch.ones_like(bn.running_var)) / torch.sqrt(
            bn.running_var + bn.eps)
        shift = bn.bias if bn.bias is not None else torch.zeros_like(bn.running_mean)
        bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
        fused.weight = nn.Parameter(conv.weight * scale.reshape(-1, *([1] * (conv.weight.dim() - 1))))
        fused.bias = nn.Parameter((bias - bn.running_mean) * scale + shift)
    return fused


def fold_batchnorms(model: nn.Module, example_inputs) -> list[tuple[str, str]]:
    """Fold every BatchNorm that directly and only follows a convolution into it, in place.

    The conv is replaced by its folded copy and the BatchNorm by ``nn.Identity``; the model must be used in
    eval mode afterwards (the statistics are baked in). A BatchNorm subclass with its own ``forward`` (timm's
    ``BatchNormAct2d`` applies an activation after normalizing) computes more than the statistics: it stays
    as it is, unfolded, with a log line naming it.

    Args:
        model: the model (changed in place).
        example_inputs: inputs for one traced forward pass.

    Returns:
        The ``(conv, batchnorm)`` module name pairs that were folded.
    """
    from slimtorch.graph.trace import trace

    tr = trace(model, example_inputs)
    uses: dict[int, int] = {}
    for op in tr.ops:
        for r in op.refs():
            uses[r] = uses.get(r, 0) + 1
    producer = {op.outputs[0]: op for op in tr.ops if op.name in {"conv1d", "conv2d", "conv3d"}}
    pairs = []
    for op in tr.ops:
        if op.name != "batch_norm" or not op.refs():
            continue
        src = producer.get(op.refs()[0])
        if src is None or uses.get(src.outputs[0], 0) != 1 or not src.module or not op.module:
            continue
        conv, bn = model.get_submodule(src.module), model.get_submodule(op.module)
        if not isinstance(conv, nn.modules.conv._ConvNd) or not isinstance(bn, nn.modules.batchnorm._BatchNorm):
            continue
        if type(bn).forward not in (nn.modules.batchnorm._BatchNorm.forward, nn.SyncBatchNorm.forward):
            logger.info("not folding %s into %s: %s has its own forward (it may compute more than the "
                        "normalization)", op.module, src.module, type(bn).__name__)
            continue
        pairs.append((src.module, op.module))
    for conv_name, bn_name in pairs:
        fused = fold_conv_bn(model.get_submodule(conv_name), model.get_submodule(bn_name))
        model.set_submodule(conv_name, fused)
        model.set_submodule(bn_name, nn.Identity())
    return pairs


def replace_layer(model: nn.Module, name: str, twin: nn.Module) -> nn.Module:
    """Put ``twin``, a compressed layer built from ``slimtorch.layer_kinds.as_plain`` of the layer at ``name``,
    in that layer's place, carrying what the plain layer does not compute by itself.

    A TensorFlow-"same" padded convolution (``layer_kind`` ``"same_pad"``) pads its input in its own forward:
    the twin's ``same_pad`` is set (and recorded, so ``slimtorch.load`` sets it again), and the twin pads with
    ``slimtorch.layer_kinds.pad_same`` before its own padding-0 convolutions.

    Args:
        model: the model (changed in place).
        name: qualified name of the layer to replace (not ``""``).
        twin: the replacement.

    Returns:
        The layer that was there.

    Raises:
        ValueError: the layer pads "same" and ``twin``'s class has no ``same_pad`` attribute to carry it.
    """
    old = model.get_submodule(name)
    if layer_kind(old).kind == "same_pad":
        if not hasattr(twin, "same_pad"):
            raise ValueError(f"{type(twin).__name__} cannot pad 'same' like layer {name!r}; it needs a same_pad "
                             "attribute")
        set_tracked_attr(twin, "same_pad", True)
    model.set_submodule(name, twin)
    return old
