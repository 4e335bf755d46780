"""Channel labels and spaces: the algebra under the coupled groups of :mod:`slimtorch.graph.groups`.

Every dimension of every traced tensor carries a *label*: an ordered list of segments, each saying which
channels of which *space* its entries hold. A space is a set of channels that are pruned as one (a conv's
output channels, a class token's width ...). Ops unify labels (a residual add makes two spaces one), build
them (a concatenation lists the spaces of its parts), slice them (a split) or scale them (a flatten turns one
channel into ``H*W`` features; a view into heads turns ``D`` channels into one head entry). A segment is
``(space, lo, hi, f)``: channels ``lo..hi-1`` of ``space``, ``f`` entries per channel (a fraction: ``f=1/64``
means one entry per 64 channels, i.e. one attention head). ``None`` as a space means entries that are not
channels of anything prunable (model inputs, spatial positions).

Worked example (a ResNet block): ``conv1`` produces space A (its weight's dim 0); ``bn1`` unifies its four
vectors with A; ``conv2`` reads A (its weight's dim 1, coupled) and produces B; the shortcut add unifies B
with the block input's space X, so ``conv2``'s filters, ``bn2`` and every consumer of X form one group.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction
from math import lcm

Seg = tuple  # (space: int | None, lo: int, hi: int, f: Fraction)
Label = tuple  # tuple[Seg, ...]; None for a dimension that holds no prunable channels


class Misaligned(Exception):
    """A slice or reshape cuts through a channel: the spaces involved cannot be pruned."""


def entries(seg: Seg) -> int:
    """Number of tensor entries a segment covers."""
    n = (seg[2] - seg[1]) * seg[3]
    if n.denominator != 1:
        raise Misaligned(seg)
    return int(n)


def label_size(label: Label) -> int:
    """Number of tensor entries a label covers."""
    return sum(entries(s) for s in label)


def untracked(n: int) -> Label:
    """The label of ``n`` entries that hold no prunable channel."""
    return ((None, 0, n, Fraction(1)),)


def slice_label(label: Label, start: int, stop: int) -> Label:
    """Entries ``start..stop-1`` of a label; raises Misaligned if a cut splits a channel's entries."""
    out = []
    pos = 0
    for space, lo, hi, f in label:
        n = entries((space, lo, hi, f))
        a, b = max(start - pos, 0), min(stop - pos, n)
        if a < b:
            if space is None:
                out.append((None, 0, b - a, Fraction(1)))
            else:
                ca, cb = Fraction(a) / f, Fraction(b) / f
                if ca.denominator != 1 or cb.denominator != 1:
                    raise Misaligned(label)
                out.append((space, lo + int(ca), lo + int(cb), f))
        pos += n
    return tuple(out)


def scale_label(label: Label, factor: Fraction) -> Label:
    """Each entry becomes ``factor`` entries (a flatten: factor = H*W; a split into heads: factor = 1/D)."""
    out = []
    for space, lo, hi, f in label:
        g = f * factor
        if space is None:
            n = (hi - lo) * g
            if n.denominator != 1:
                raise Misaligned(label)
            out.append((None, 0, int(n), Fraction(1)))
            continue
        if g.numerator != 1 and g.denominator != 1 or (g < 1 and (lo % g.denominator or hi % g.denominator)):
            raise Misaligned(label)
        out.append((space, lo, hi, g))
    return tuple(out)


@dataclass
class Spaces:
    """Union-find over channel spaces, with definitions (a space defined as a composite label), frozen
    flags (with the reason), producers, and the constraints ``block`` (prune whole heads) and ``groups``
    (prune the same number of channels from each of ``groups`` equal parts)."""

    size: list[int] = field(default_factory=list)
    parent: list[int] = field(default_factory=list)
    definition: dict[int, Label] = field(default_factory=dict)
    frozen: dict[int, str] = field(default_factory=dict)
    producer: set[int] = field(default_factory=set)
    block: dict[int, int] = field(default_factory=dict)
    groups: dict[int, int] = field(default_factory=dict)

    def new(self, size: int) -> int:
        """A fresh space of ``size`` channels; returns its id."""
        self.size.append(size)
        self.parent.append(len(self.parent))
        return len(self.parent) - 1

    def find(self, s: int) -> int:
        """The root of ``s``'s class."""
        while self.parent[s] != s:
            self.parent[s] = self.parent[self.parent[s]]
            s = self.parent[s]
        return s

    def resolve(self, label: Label | None, depth: int = 0) -> Label | None:
        """Rewrite a label in terms of base roots only (definitions substituted)."""
        if label is None:
            return None
        if depth > 64:
            raise Misaligned(label)
        out: list[Seg] = []
        for space, lo, hi, f in label:
            if space is None:
                out.append((None, lo, hi, f))
                continue
            r = self.find(space)
            if r in self.definition:
                sub = slice_label(self.resolve(self.definition[r], depth + 1), lo, hi)
                out.extend(scale_label(sub, f))
            else:
                out.append((r, lo, hi, f))
        return _merge(out)

    def bases(self, label: Label | None) -> set[int]:
        """The base roots a label touches."""
        resolved = self.resolve(label) if label is not None else None
        return {s[0] for s in resolved or () if s[0] is not None}

    def freeze(self, label: Label | None, reason: str) -> None:
        """Mark every space a label touches as not prunable, keeping the first reason given."""
        try:
            roots = self.bases(label)
        except Misaligned:
            roots = {self.find(s[0]) for s in label or () if s[0] is not None}
        for r in roots:
            self.frozen.setdefault(r, reason)

    def union(self, a: int, b: int) -> None:
        """Make two base roots of equal size one space, merging their flags and constraints."""
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        self.parent[rb] = ra
        if rb in self.frozen:
            self.frozen.setdefault(ra, self.frozen[rb])
        if rb in self.producer:
            self.producer.add(ra)
        if rb in self.block:
            self.block[ra] = lcm(self.block.get(ra, 1), self.block[rb])
        if rb in self.groups:
            if self.groups.setdefault(ra, self.groups[rb]) != self.groups[rb]:
                self.frozen.setdefault(ra, "two different group counts (grouped conv/GroupNorm) meet")

    def unify(self, x: Label | None, y: Label | None, n: int, why: str) -> None:
        """Couple two labels of the same ``n`` entries: their channels must be removed together."""
        x = untracked(n) if x is None else x
        y = untracked(n) if y is None else y
        try:
            rx, ry = self.resolve(x), self.resolve(y)
            if rx == ry:
                return
            if len(rx) == len(ry) == 1 and self._whole(rx[0]) and self._whole(ry[0]) and rx[0][3] == ry[0][3]:
                self.union(rx[0][0], ry[0][0])
                return
            if self._define(rx, ry) or self._define(ry, rx):
                return
            for sx, sy in zip(*_refine(rx, ry), strict=True):
                self._unify_seg(sx, sy, why)
        except Misaligned:
            self.freeze(x, f"{why}: channels are not aligned")
            self.freeze(y, f"{why}: channels are not aligned")

    def split_space(self, label: Label, sizes: list[int]) -> list[Label] | None:
        """If ``label`` is one whole, unconstrained space, redefine it as fresh consecutive parts of ``sizes``
        (a fused q/k/v projection split in three) and return the parts' labels; otherwise None."""
        resolved = self.resolve(label)
        if len(resolved) != 1 or not self._whole(resolved[0]) or resolved[0][3] != 1:
            return None
        r = resolved[0][0]
        if r in self.block or r in self.groups or sum(sizes) != self.size[r]:
            return None
        parts = [self.new(n) for n in sizes]
        for p in parts:
            if r in self.frozen:
                self.frozen[p] = self.frozen[r]
            if r in self.producer:
                self.producer.add(p)
        self.definition[r] = tuple((p, 0, n, Fraction(1)) for p, n in zip(parts, sizes, strict=True))
        return [((p, 0, n, Fraction(1)),) for p, n in zip(parts, sizes, strict=True)]

    def repeat(self, x: Label, y: Label, factor: int) -> bool:
        """Define the whole space under ``x`` as the whole space under ``y`` with every channel repeated ``factor``
        times, and return True; False (nothing changed) when the labels are not two whole spaces of the same
        entry width whose sizes differ by ``factor``.

        Grouped-query attention: ``x`` holds the query heads, ``y`` the key/value heads, and query heads
        ``i*factor .. (i+1)*factor-1`` read key/value head ``i``; removing a key/value head removes its query
        heads. A query head of ``D`` channels is then ``D / factor`` key/value channels, a block the key/value
        head's own block already covers, so the query space's block is dropped.
        """
        rx, ry = self.resolve(x), self.resolve(y)
        if len(rx) != 1 or len(ry) != 1 or not self._whole(rx[0]) or not self._whole(ry[0]) or rx[0][3] != ry[0][3]:
            return False
        q, kv = rx[0][0], ry[0][0]
        if q == kv or q in self.groups or self.size[q] != factor * self.size[kv]:
            return False
        if q in self.frozen:
            self.frozen.setdefault(kv, self.frozen[q])
        if q in self.producer:
            self.producer.add(kv)
        self.block.pop(q, None)
        self.definition[q] = ((kv, 0, self.size[kv], Fraction(factor)),)
        return True

    def _whole(self, seg: Seg) -> bool:
        return seg[0] is not None and seg[1] == 0 and seg[2] == self.size[seg[0]]

    def _define(self, x: Label, y: Label) -> bool:
        """If ``x`` is exactly one whole, unconstrained space, define it as ``y``."""
        if len(x) != 1 or not self._whole(x[0]) or x[0][3] != 1:
            return False
        r = x[0][0]
        bases = self.bases(y)
        if not bases or r in bases or r in self.block or r in self.groups:
            return False
        if r in self.frozen:
            self.freeze(y, self.frozen[r])
        if r in self.producer:
            for b in self.bases(y):
                self.producer.add(b)
        self.definition[r] = y
        return True

    def _unify_seg(self, a: Seg, b: Seg, why: str) -> None:
        if a == b or a[0] is None and b[0] is None:
            return
        if a[0] is None or b[0] is None:
            self.freeze((b if a[0] is None else a,), f"{why}: meets a tensor whose channels cannot change")
            return
        if self._whole(a) and self._whole(b) and a[3] == b[3]:
            self.union(a[0], b[0])
            return
        if self._define((a,), (b,)) or self._define((b,), (a,)):
            return
        self.freeze((a,), f"{why}: partial channel ranges meet")
        self.freeze((b,), f"{why}: partial channel ranges meet")


def _merge(label: list[Seg]) -> Label:
    """Join adjacent segments that continue each other (same space, same factor)."""
    out: list[Seg] = []
    for seg in label:
        if out and out[-1][0] == seg[0] and out[-1][3] == seg[3] and out[-1][2] == seg[1]:
            out[-1] = (seg[0], out[-1][1], seg[2], seg[3])
        elif out and out[-1][0] is None and seg[0] is None:
            out[-1] = (None, 0, out[-1][2] + seg[2] - seg[1], Fraction(1))
        else:
            out.append(seg)
    return tuple(out)


def _refine(x: Label, y: Label) -> tuple[list[Seg], list[Seg]]:
    """Cut both labels at the union of their segment boundaries so they pair up segment by segment."""
    cuts = sorted(set(_bounds(x)) | set(_bounds(y)))
    px = [slice_label(x, a, b)[0] for a, b in zip(cuts, cuts[1:], strict=False)]
    py = [slice_label(y, a, b)[0] for a, b in zip(cuts, cuts[1:], strict=False)]
    return px, py


def _bounds(label: Label) -> list[int]:
    out, pos = [0], 0
    for seg in label:
        pos += entries(seg)
        out.append(pos)
    return out
