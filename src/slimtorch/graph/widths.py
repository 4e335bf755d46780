"""Width attributes: after surgery, rewrite the plain integers and config fields that hold a pruned width.

Cutting weights is not enough when a ``forward`` reads a width from an attribute (torchvision's
``VisionTransformer`` reshapes with ``self.hidden_dim``; Hugging Face attention views with
``self.num_attention_heads``) or when the model is rebuilt from a config (``from_pretrained``). After
:func:`~slimtorch.graph.surgery.shrink`, :func:`rewrite_widths` finds every integer attribute with a known width
name whose value is the old width (or head count) of a group it contains, and sets the new one.

Worked example (torchvision ViT, width 64, 4 heads of 16, MLP 128, pruned by half): the residual group (64 -> 32)
rewrites the root's ``hidden_dim``; each block's MLP group (128 -> 64) rewrites the root's ``mlp_dim`` (all blocks
agree); each head group (4 -> 2 heads) rewrites its block's ``num_heads``. ``head_dim`` and a float ``scale``
stay: whole heads are removed, so a head keeps its width.

One attribute can stand for several groups (a Hugging Face ``config.intermediate_size`` for every layer's MLP).
When those groups end with different widths (``scope="global"``, or ``ignore``/``select`` sparing some layers),
no single value is right: the attribute is left as it was and a warning says so.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping

import torch
from torch import nn

from slimtorch._log import logger
from slimtorch.graph.groups import ChannelGraph, Group
from slimtorch.io.manifest import set_tracked_attr

#: head counts: compared with the number of heads of head groups (channels removed in whole heads)
HEAD_COUNTS = frozenset({"num_heads", "num_attention_heads", "n_head", "n_heads", "num_key_value_heads",
                         "num_kv_heads", "n_kv_heads"})
#: heads x head width: compared with the channel count of head groups
HEAD_WIDTHS = frozenset({"all_head_size", "attn_dim", "inner_dim", "kv_dim", "split_size"})
#: one head's width: kept (whole heads are removed), recorded with a holder's rewritten widths
HEAD_DIMS = frozenset({"attention_head_size", "head_dim", "head_size"})
#: the residual (model) width, shared by the layers
MODEL_WIDTHS = frozenset({"hidden_size", "hidden_dim", "embed_dim", "d_model", "n_embd", "num_features"})
#: a layer's own width (the MLP's hidden neurons)
LAYER_WIDTHS = frozenset({"intermediate_size", "mlp_dim", "ffn_dim", "n_inner", "hidden_features"})
#: derived: query heads per key/value head, recomputed from the holder's own head counts
KV_GROUPS = (("num_key_value_groups", "num_attention_heads", "num_key_value_heads"),
             ("num_kv_groups", "num_heads", "num_kv_heads"))
CONFIG_HINT = ("Hugging Face save_pretrained/from_pretrained cannot rebuild this model from one config (st.save and "
               "st.load can); prune with scope='uniform' and without ignore/select sparing some layers to keep one "
               "width per field")


def rewrite_widths(model: nn.Module, graph: ChannelGraph, keep: Mapping[int, torch.Tensor]) -> list[str]:
    """Set the width attributes and config fields of ``model`` to the widths left by ``keep``.

    Args:
        model: the model, already cut by :func:`~slimtorch.graph.surgery.shrink`.
        graph: the channel graph the cut followed.
        keep: group id -> kept channels (groups not listed keep all).

    Returns:
        One ``"holder.attr old->new"`` line per rewritten attribute (``config.field`` for a config).
    """
    groups = [_Width(g, keep, model) for g in graph.groups]
    if not any(w.new != w.old for w in groups):
        return []
    done: list[str] = []
    for path, module in model.named_modules():
        if hasattr(module, "resize_attributes"):  # SlimMultiheadAttention re-reads its projections
            module.resize_attributes()
            continue
        if type(module).__module__.startswith("torch.nn"):
            continue  # torch layers: fixed from their weights by surgery
        where = path or type(module).__name__
        if _rewrite(module, path, where, groups, set_tracked_attr, done):  # tracked: st.load sets them again
            _recount_kv_groups(module, where, set_tracked_attr, done)
            for attr in sorted(HEAD_DIMS & vars(module).keys()):  # unchanged, but a model built from the pruned
                if isinstance(vars(module)[attr], int):  # config would derive it as hidden_size / heads
                    set_tracked_attr(module, attr, vars(module)[attr])
    for path, config in _configs(model).items():
        where = f"{path}.config" if path else "config"
        owner = model.get_submodule(path)

        def set_config(_: object, attr: str, value: int, owner: nn.Module = owner) -> None:
            set_tracked_attr(owner, f"config.{attr}", value)  # tracked on the module: st.load sets it again

        if _rewrite(config, path, where, groups, set_config, done):
            _recount_kv_groups(config, where, set_config, done)
    if done:
        logger.info("structured pruning rewrote width attributes: %s", ", ".join(done))
    return done


class _Width:
    """A group seen from its attributes: old and new width and head count, where it lives."""

    def __init__(self, group: Group, keep: Mapping[int, torch.Tensor], model: nn.Module) -> None:
        self.heads = group.block > 1
        self.block = group.block
        self.old = group.size
        self.new = int(keep[group.id].numel()) if group.id in keep else group.size
        self.owners = {m.param.rpartition(".")[0] for m in group.members} | set(group.producers)
        self.scope = common_scope(group.producers)
        self.spans_layers = _spans_layers(model, group.producers)
        # grouped-query attention: the query projection holds each key/value channel ``f`` times
        self.repeats = {int(f) for m in group.members for space, _, _, f in m.label
                        if space == group.id and f >= 1 and f.denominator == 1} or {1}

    def inside(self, path: str) -> bool:
        return not path or any(o == path or o.startswith(path + ".") for o in self.owners)

    def rewrite(self, attr: str, value: int) -> int | None:
        """The new value of an attribute that holds ``value`` for this group, or None when it does not."""
        if attr in MODEL_WIDTHS or attr in LAYER_WIDTHS:
            return self.new if not self.heads and value == self.old else None
        if not self.heads or (attr not in HEAD_COUNTS and attr not in HEAD_WIDTHS):
            return None
        unit = self.block if attr in HEAD_COUNTS else 1
        for r in sorted(self.repeats):
            if value == self.old // unit * r:
                return self.new // unit * r
        return None


def _rewrite(holder, path: str, where: str, groups: list[_Width], setter, done: list[str]) -> bool:
    """Rewrite the width attributes of one module or config whose subtree is ``path``."""
    changed = False
    for attr, value in list(vars(holder).items()):
        if not isinstance(value, int) or isinstance(value, bool):
            continue
        hits = _narrow(attr, path, [(w, n) for w in groups if w.inside(path)
                                    and (n := w.rewrite(attr, value)) is not None])
        new = {n for _, n in hits}
        if len(new) > 1:
            logger.warning("%s.%s=%d stands for %d pruned groups that now have different widths %s; it is left "
                           "unchanged%s", where, attr, value, len(hits), sorted(new),
                           f". {CONFIG_HINT}" if "config" in where else "")
        elif new and (n := new.pop()) != value:
            setter(holder, attr, n)
            done.append(f"{where}.{attr} {value}->{n}")
            changed = True
    return changed


def _narrow(attr: str, path: str, hits: list[tuple[_Width, int]]) -> list[tuple[_Width, int]]:
    """Among groups with the same old value, prefer those produced inside the holder, then the role the name
    says (the residual width spans the layers, an MLP width does not)."""
    hits = [h for h in hits if not path or h[0].scope == path or h[0].scope.startswith(path + ".")] or hits
    if attr in MODEL_WIDTHS:
        hits = [h for h in hits if h[0].spans_layers] or hits
    elif attr in LAYER_WIDTHS:
        hits = [h for h in hits if not h[0].spans_layers] or hits
    return hits


def _recount_kv_groups(holder, where: str, setter, done: list[str]) -> None:
    for groups_attr, heads_attr, kv_attr in KV_GROUPS:
        values = vars(holder)
        if all(isinstance(values.get(a), int) for a in (groups_attr, heads_attr, kv_attr)) and values[kv_attr]:
            n = values[heads_attr] // values[kv_attr]
            if n != values[groups_attr]:
                done.append(f"{where}.{groups_attr} {values[groups_attr]}->{n}")
                setter(holder, groups_attr, n)


def _configs(model: nn.Module) -> dict[str, object]:
    """Hugging Face style configs (an object with ``to_dict``, held as ``.config``), each under the shortest
    module path that holds it."""
    found: dict[int, tuple[str, object]] = {}
    for path, module in model.named_modules():
        config = module.__dict__.get("config")
        if config is None or isinstance(config, nn.Module) or not hasattr(config, "to_dict"):
            continue
        if id(config) not in found:
            found[id(config)] = (path, config)
    return dict(found.values())


def common_scope(names: list[str]) -> str:
    """The module that owns a set of layers: their longest common prefix (for a single layer, its parent)."""
    parts = [n.split(".") for n in names if n]
    if not parts:
        return ""
    common = []
    for items in zip(*parts, strict=False):
        if len(set(items)) != 1:
            break
        common.append(items[0])
    if len(parts) == 1:  # a single projection: its parent owns the head count
        common = common[:-1]
    return ".".join(common)


def _spans_layers(model: nn.Module, producers: list[str]) -> bool:
    """True when the producers sit in two or more members of one plain ``nn.ModuleList``/``nn.Sequential``
    (the residual stream of a stack of layers)."""
    for path, module in model.named_modules():
        if type(module) not in (nn.ModuleList, nn.Sequential):
            continue
        prefix = f"{path}." if path else ""
        members = {p[len(prefix):].split(".")[0] for p in producers if p.startswith(prefix)}
        if len(members) > 1:
            return True
    return False


def config_mismatches(model: nn.Module) -> list[str]:
    """Parameters whose shape differs from what ``model.config`` builds (a Hugging Face model rebuilt with
    ``type(model)(model.config)``, on the meta device: nothing is allocated).

    Returns:
        One ``"name: config builds (..), model has (..)"`` line per differing parameter; empty when the model
        has no such config, the config describes it, or the model cannot be built from the config alone.
    """
    config = model.__dict__.get("config")
    if config is None or not hasattr(config, "to_dict") or not hasattr(type(model), "from_pretrained"):
        return []
    try:
        with torch.device("meta"):
            fresh = type(model)(copy.deepcopy(config))
    except (TypeError, ValueError, RuntimeError, AttributeError, NotImplementedError):
        return []  # a constructor that needs more than the config, or real tensors: nothing to compare
    built = {k: tuple(v.shape) for k, v in fresh.state_dict().items()}
    return [f"{k}: config builds {built[k]}, model has {tuple(v.shape)}" for k, v in model.state_dict().items()
            if k in built and built[k] != tuple(v.shape)]
