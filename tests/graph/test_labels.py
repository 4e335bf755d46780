"""Label algebra: slicing and scaling keep channel alignment; kept entries follow kept channels."""

from fractions import Fraction

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from slimtorch.graph.labels import Misaligned, Spaces, label_size, scale_label, slice_label
from slimtorch.graph.surgery import kept_entries

ONE = Fraction(1)


def test_flatten_scale_maps_a_channel_to_its_features():
    label = scale_label(((0, 0, 3, ONE),), Fraction(4))  # (C=3, H*W=4) flattened
    assert label_size(label) == 12
    assert kept_entries(label, {0: torch.tensor([1])}).tolist() == [4, 5, 6, 7]


def test_heads_scale_and_alignment():
    heads = scale_label(((0, 0, 8, ONE),), Fraction(1, 4))  # 8 channels viewed as 2 heads of 4
    assert label_size(heads) == 2
    assert kept_entries(heads, {0: torch.tensor([4, 5, 6, 7])}).tolist() == [1]
    with pytest.raises(Misaligned):
        scale_label(((0, 2, 8, ONE),), Fraction(1, 4))  # starts inside a head


def test_slice_cuts_between_channels_only():
    label = ((0, 0, 4, Fraction(2)),)
    assert slice_label(label, 2, 6) == ((0, 1, 3, Fraction(2)),)
    with pytest.raises(Misaligned):
        slice_label(label, 1, 4)


def test_union_definition_and_freeze():
    sp = Spaces()
    a, b, c = sp.new(4), sp.new(4), sp.new(8)
    sp.unify(((a, 0, 4, ONE),), ((b, 0, 4, ONE),), 4, "add")
    assert sp.find(a) == sp.find(b)
    sp.unify(((c, 0, 8, ONE),), ((a, 0, 4, ONE), (None, 0, 4, ONE)), 8, "cat")  # c is defined as [a, untracked]
    assert sp.resolve(((c, 0, 8, ONE),))[0][0] == sp.find(a)
    sp.unify(None, ((b, 0, 4, ONE),), 4, "input")
    assert sp.find(a) in sp.frozen


@given(st.lists(st.integers(1, 5), min_size=1, max_size=4), st.integers(1, 4), st.data())
def test_kept_entries_of_a_concat_of_flattened_spaces(sizes, rep, data):
    label = tuple((i, 0, n, Fraction(rep)) for i, n in enumerate(sizes))
    keep = {i: torch.tensor(sorted(data.draw(st.sets(st.integers(0, n - 1), min_size=1)))) for i, n in enumerate(sizes)}
    idx = kept_entries(label, keep)
    assert idx.numel() == rep * sum(len(k) for k in keep.values())
    assert torch.all(idx[1:] > idx[:-1])
    offsets = [0]
    for n in sizes:
        offsets.append(offsets[-1] + n * rep)
    expected = [offsets[i] + c * rep + r for i, k in keep.items() for c in k.tolist() for r in range(rep)]
    assert idx.tolist() == expected


def test_repeat_defines_query_heads_as_repeated_key_value_channels():
    sp = Spaces()
    q, kv = sp.new(8), sp.new(4)  # 4 query heads and 2 key/value heads, 2 channels per head
    q_heads, kv_heads = ((q, 0, 8, Fraction(1, 2)),), ((kv, 0, 4, Fraction(1, 2)),)
    sp.block[q] = sp.block[kv] = 2
    assert sp.repeat(q_heads, kv_heads, 2)
    label = sp.resolve(((q, 0, 8, ONE),))
    assert label == ((kv, 0, 4, Fraction(2)),) and q not in sp.block
    # keeping key/value head 1 (channels 2, 3) keeps query heads 2 and 3 (channels 4..7)
    assert kept_entries(label, {kv: torch.tensor([2, 3])}).tolist() == [4, 5, 6, 7]
    assert not sp.repeat(((kv, 0, 4, ONE),), kv_heads, 2)  # one space cannot repeat itself
