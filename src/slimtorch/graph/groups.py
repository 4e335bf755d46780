"""Coupled channel groups: trace a model once and say which parameter slices must be removed together.

:func:`build` runs the model on example inputs (:mod:`slimtorch.graph.trace`), applies one channel rule per
op (:mod:`slimtorch.graph.rules`) to the labels of :mod:`slimtorch.graph.labels`, and returns a
:class:`ChannelGraph`: one :class:`Group` per space of channels that some layer produces. A group lists every
parameter dim whose entries hold its channels (a conv's filters, the next BatchNorm, each consumer's input
channels, both sides of a residual add, a class token, a layer scale), so removing channel ``c`` of the group
means removing the matching entries of all of them. Groups that touch something the rules cannot follow
(an op without a rule, the model's output) are frozen with the reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

from torch import nn

from slimtorch.graph.labels import Label, Misaligned, Spaces
from slimtorch.graph.rules import rule_for
from slimtorch.graph.trace import Op, Ref, Trace, trace

OUTPUT_REASON = "it reaches the model's output, whose shape is kept"
INPUT_REASON = "it meets the model's input, whose shape is kept"


@dataclass
class Member:
    """One parameter dim in a group: ``label`` maps the dim's entries to channels of base spaces."""

    param: str
    dim: int
    label: Label


@dataclass
class Group:
    """Channels that are removed together.

    Attributes:
        id: the space id (stable within one graph).
        size: number of channels.
        members: every parameter dim holding these channels.
        producers: modules whose outputs are these channels (convs, linears, embeddings).
        block: channels are removed in whole blocks of this size (attention heads); 1 otherwise.
        groups: channels are removed evenly from this many equal parts (grouped conv, GroupNorm).
        frozen: why the group cannot be pruned, or None when it can.
    """

    id: int
    size: int
    members: list[Member] = field(default_factory=list)
    producers: list[str] = field(default_factory=list)
    block: int = 1
    groups: int = 1
    frozen: str | None = None

    @property
    def prunable(self) -> bool:
        """True when channels of this group can be removed."""
        return self.frozen is None and self.size > max(self.block, 1)


@dataclass
class ChannelGraph:
    """The result of :func:`build`: groups, per-parameter labels and what the rules could not follow."""

    groups: list[Group]
    params: dict[str, list[Member]]
    unsupported: list[str]
    trace: Trace
    grouped: dict[str, tuple[int, int]] = field(default_factory=dict)  # grouped conv weight -> (groups, input space)

    def prunable(self) -> list[Group]:
        """The groups whose channels can be removed."""
        return [g for g in self.groups if g.prunable]


class _Builder:
    """State the rules read and write: labels per tensor id, spaces, producers, unsupported ops."""

    def __init__(self, tr: Trace) -> None:
        self.trace = tr
        self.spaces = Spaces()
        self.labels: dict[int, list] = {}
        self.param_dims: dict[tuple[str, int], int] = {}
        self.producers: list[tuple[Label, str]] = []
        self.pending: list[tuple[str, list]] = []
        self.grouped_inputs: list[tuple[int, int, Any]] = []  # (weight id, groups, input label) of grouped convs

    def shape(self, ref: Ref | int) -> tuple[int, ...]:
        return self.trace.shapes[ref.id if isinstance(ref, Ref) else ref]

    def dims(self, ref: Ref | int | None) -> list:
        if ref is None:
            return []
        key = ref.id if isinstance(ref, Ref) else ref
        if key not in self.labels:
            shape = self.trace.shapes.get(key, ())
            name = self.trace.params.get(key)
            labels: list = [None] * len(shape)
            if name is not None:
                for d, n in enumerate(shape):
                    if n > 1:
                        s = self.spaces.new(n)
                        self.param_dims[(name, d)] = s
                        labels[d] = ((s, 0, n, Fraction(1)),)
            self.labels[key] = labels
        return self.labels[key]

    def set(self, out: int, labels: list | None) -> None:
        shape = self.trace.shapes[out]
        if labels is None or len(labels) != len(shape):
            labels = [None] * len(shape)
        self.labels[out] = [None if n <= 1 else lab for lab, n in zip(labels, shape, strict=True)]

    def unify(self, x: Any, y: Any, n: int, why: str) -> None:
        if n > 1:
            self.spaces.unify(x, y, n, why)

    def freeze(self, label: Any, why: str) -> None:
        self.spaces.freeze(label, why)

    def mark_producer(self, label: Any, module: str) -> None:
        if label is not None:
            self.producers.append((label, module))
            for r in self.spaces.bases(label):
                self.spaces.producer.add(r)

    def set_block(self, label: Any) -> None:
        """A label with fractional entries (heads): its spaces are removed in whole blocks."""
        for space, _lo, _hi, f in self.spaces.resolve(label) or ():
            if space is not None and f < 1:
                block = f.denominator
                self.spaces.block[space] = max(self.spaces.block.get(space, 1), block)
                if self.spaces.block[space] % block:
                    self.spaces.frozen.setdefault(space, "two head sizes meet")

    def set_groups(self, label: Any, groups: int) -> bool:
        """Channels of ``label`` must be removed evenly from ``groups`` parts; False (and frozen) if impossible."""
        if label is None or groups <= 1:
            return False
        r = self.whole_space(label)
        if r is None:
            self.freeze(label, f"channels split into {groups} groups are not one whole space")
            return False
        if self.spaces.groups.setdefault(r, groups) != groups:
            self.spaces.frozen.setdefault(r, "two different group counts meet")
            return False
        return True

    def whole_space(self, label: Any) -> int | None:
        """The base space a label covers entirely (one entry per channel), or None."""
        try:
            resolved = self.spaces.resolve(label)
        except Misaligned:
            return None
        if len(resolved) != 1 or resolved[0][0] is None or resolved[0][3] != 1:
            return None
        r, lo, hi, _ = resolved[0]
        return r if lo == 0 and hi == self.spaces.size[r] else None

    def report(self, op: Op, labels: list) -> None:
        """Remember an op without a rule; it is reported if it froze channels some layer produces."""
        self.pending.append((f"{op.name!r} in {op.module or 'forward'}", labels))

    def reported(self) -> list[str]:
        out = []
        for where, labels in self.pending:
            roots = set()
            for label in labels:
                try:
                    roots |= self.spaces.bases(label)
                except Misaligned:
                    continue
            if roots & {self.spaces.find(r) for r in self.spaces.producer} and where not in out:
                out.append(where)
        return out


def build(model: nn.Module, example_inputs: Any) -> ChannelGraph:
    """Trace ``model`` on ``example_inputs`` and group its coupled channels.

    Args:
        model: the model (not changed).
        example_inputs: inputs for one real forward pass (a tensor, a tuple or a dict).

    Returns:
        The :class:`ChannelGraph`.

    Raises:
        DataError: example_inputs is None.
        UnsupportedModelError: the forward pass fails on the example inputs.
    """
    tr = trace(model, example_inputs)
    b = _Builder(tr)
    for ref in tr.inputs:  # the model's inputs keep their shape: their dims are spaces frozen from the start
        labels = []
        for n in tr.shapes[ref]:
            s = b.spaces.new(n)
            b.spaces.frozen[s] = INPUT_REASON
            labels.append(((s, 0, n, Fraction(1)),) if n > 1 else None)
        b.labels[ref] = labels
    for op in tr.ops:
        try:
            rule_for(op)(b, op)
        except (Misaligned, IndexError, TypeError, ValueError, KeyError, ZeroDivisionError):
            from slimtorch.graph.shape_rules import unsupported

            unsupported(b, op)
    for out in tr.outputs:
        for label in b.dims(out):
            b.freeze(label, OUTPUT_REASON)
    return _collect(b)


def _collect(b: _Builder) -> ChannelGraph:
    sp = b.spaces
    params: dict[str, list[Member]] = {}
    by_space: dict[int, Group] = {}
    for (name, dim), s in b.param_dims.items():
        try:
            label = sp.resolve(((s, 0, sp.size[s], Fraction(1)),))
        except Misaligned:
            sp.freeze(((s, 0, sp.size[s], Fraction(1)),), "misaligned channels")
            continue
        bases = {seg[0] for seg in label if seg[0] is not None}
        if not bases:
            continue
        member = Member(name, dim, label)
        params.setdefault(name, []).append(member)
        for r in bases:
            group = by_space.setdefault(r, Group(r, sp.size[r]))
            group.members.append(member)
    for label, module in b.producers:
        try:
            roots = sp.bases(label)
        except Misaligned:
            continue
        for r in roots:
            if r in by_space and module not in by_space[r].producers:
                by_space[r].producers.append(module)
    grouped: dict[str, tuple[int, int]] = {}
    for wid, n_groups, label in b.grouped_inputs:
        r = b.whole_space(label)
        if r is None:
            b.freeze(label, "the input of a grouped conv is not one whole space")
        elif r in by_space:
            grouped[b.trace.params[wid]] = (n_groups, r)
    groups = []
    for r, group in sorted(by_space.items()):
        if r not in sp.producer:
            continue
        group.block = sp.block.get(r, 1)
        group.groups = sp.groups.get(r, 1)
        group.frozen = sp.frozen.get(r)
        if group.size % (group.block * group.groups):
            group.frozen = group.frozen or "channel count is not a multiple of its head size times its groups"
        groups.append(group)
    return ChannelGraph(groups, params, b.reported(), b.trace, grouped)
