"""The shape and elementwise channel rules of ``slimtorch.graph.shape_rules``.

Each rule runs on a hand-made trace so its labels can be checked exactly: broadcasting couples dims aligned
from the right, reshapes scale labels (flatten, heads, fused q/k/v), permutes reorder them, slices and splits
cut them between channels, reductions and repeats freeze what they would break, and an op without a rule
freezes and reports what it touches. End-to-end checks then cut real models through flatten, split, cat and
transpose and compare them with the dense model whose removed channels are silenced.
"""

import copy
from fractions import Fraction

import pytest
import torch
from torch import nn

from slimtorch.graph import shape_rules as sr
from slimtorch.graph.groups import _Builder, build
from slimtorch.graph.surgery import kept_entries, shrink
from slimtorch.graph.trace import Op, Ref, Trace

ONE = Fraction(1)


def builder(shapes, params=None):
    """A builder over a hand-made trace: tensor ``i`` has ``shapes[i]``; ``params`` maps ids to names."""
    return _Builder(Trace(shapes={i: tuple(s) for i, s in enumerate(shapes)}, params=dict(params or {})))


def space(b, n):
    """The label of a fresh space of ``n`` channels."""
    return ((b.spaces.new(n), 0, n, ONE),)


def sid(label):
    return label[0][0]


def same(b, x, y):
    return b.spaces.resolve(x) == b.spaces.resolve(y)


def op(name, *args, out=(), **kwargs):
    return Op(name, tuple(args), kwargs, list(out), "m")


def frozen(b, label):
    return b.spaces.frozen.get(b.spaces.find(sid(label)))


# ---- argument helpers ----


def test_arg_reads_positional_then_keyword_then_default():
    o = op("split", Ref(0), 4, dim=1)
    assert sr.arg(o, 1, "split_size") == 4 and sr.arg(o, 2, "dim", 0) == 1 and sr.arg(o, 3, "x", "d") == "d"
    assert sr.tensors(op("cat", [Ref(3), Ref(1)], 0, out=[5], extra=(Ref(2),))) == [Ref(3), Ref(1), Ref(2)]


# ---- elementwise ----


def test_broadcasting_couples_dims_aligned_from_the_right_and_skips_size_one():
    # a (2, 4, 3) + c (4, 1) -> (2, 4, 3): c's 4 meets a's 4; its size-1 dim broadcasts and couples nothing
    b = builder([(2, 4, 3), (4, 1), (2, 4, 3)])
    a4, a3, c4 = space(b, 4), space(b, 3), space(b, 4)
    b.labels[0], b.labels[1] = [None, a4, a3], [c4, None]
    sr.elementwise(b, op("add", Ref(0), Ref(1), out=[2]))
    assert same(b, a4, c4) and b.dims(Ref(2)) == [None, a4, a3]
    assert not b.spaces.frozen


def test_elementwise_takes_labels_from_whichever_input_has_them():
    b = builder([(2, 4), (2, 4), (2, 4)])
    a = space(b, 4)
    b.labels[1] = [None, a]  # the first input is labelled from the ops before it: None everywhere
    sr.elementwise(b, op("mul", Ref(0), Ref(1), 0.5, out=[2]))
    assert b.dims(Ref(2)) == [None, a]
    assert "cannot change" in frozen(b, a)  # the unlabelled side cannot lose channels


def test_a_parameter_scale_is_coupled_with_the_channels_it_multiplies():
    b = builder([(2, 5, 4), (4,), (2, 5, 4)], {1: "gamma"})
    a = space(b, 4)
    b.labels[0] = [None, None, a]
    sr.elementwise(b, op("mul", Ref(0), Ref(1), out=[2]))
    assert same(b, b.dims(Ref(1))[0], a) and not b.spaces.frozen


def test_prelu_weight_follows_the_channel_dim():
    # one slope per channel along dim 1 (broadcasting from the right would pair it with the width)
    from slimtorch.graph.rules import rule_for

    b = builder([(1, 8, 5, 5), (8,), (1, 8, 5, 5)], {1: "act.weight"})
    a = space(b, 8)
    b.labels[0] = [None, a, None, None]
    prelu = op("prelu", Ref(0), Ref(1), out=[2])
    rule_for(prelu)(b, prelu)
    assert same(b, b.dims(Ref(1))[0], a) and same(b, b.dims(Ref(2))[1], a)


def test_prelu_weight_is_cut_with_the_conv_before_it():
    model = nn.Sequential(nn.Conv2d(3, 8, 1), nn.PReLU(8), nn.Conv2d(8, 2, 1)).eval()
    group = next(g for g in build(model, torch.randn(1, 3, 5, 5)).groups if "0" in g.producers)
    assert ("1.weight", 0) in {(m.param, m.dim) for m in group.members}


# ---- reshape ----


def test_flatten_turns_each_channel_into_its_spatial_features():
    b = builder([(2, 3, 2, 2), (2, 12)])
    a = space(b, 3)
    b.labels[0] = [None, a, None, None]
    sr.reshape(b, op("flatten", Ref(0), 1, out=[1]))
    out = b.dims(Ref(1))[1]
    assert out == ((sid(a), 0, 3, Fraction(4)),)
    assert kept_entries(out, {sid(a): torch.tensor([1])}).tolist() == [4, 5, 6, 7]


def test_view_into_heads_and_back():
    b = builder([(1, 5, 8), (1, 5, 2, 4), (1, 5, 8)])
    a = space(b, 8)
    b.labels[0] = [None, None, a]
    sr.reshape(b, op("view", Ref(0), 1, 5, 2, 4, out=[1]))
    heads = b.dims(Ref(1))
    assert heads == [None, None, ((sid(a), 0, 8, Fraction(1, 4)),), None]
    assert b.spaces.block == {sid(a): 4}  # channels go in whole heads of 4
    sr.reshape(b, op("reshape", Ref(1), 1, 5, 8, out=[2]))
    assert b.dims(Ref(2)) == [None, None, a]


def test_squeeze_and_unsqueeze_keep_the_label():
    b = builder([(2, 1, 6), (2, 6), (2, 6, 1)])
    a = space(b, 6)
    b.labels[0] = [None, None, a]
    sr.reshape(b, op("squeeze", Ref(0), 1, out=[1]))
    sr.reshape(b, op("unsqueeze", Ref(1), -1, out=[2]))
    assert b.dims(Ref(1)) == [None, a] and b.dims(Ref(2)) == [None, a, None]


def test_fused_qkv_view_splits_the_space_into_coupled_parts():
    # (1, 5, 24) viewed as (1, 5, 3 parts, 2 heads, 4): head h of q, k and v is removed together
    b = builder([(1, 5, 24), (1, 5, 3, 2, 4)])
    a = space(b, 24)
    b.labels[0] = [None, None, a]
    sr.reshape(b, op("view", Ref(0), 1, 5, 3, 2, 4, out=[1]))
    label = b.spaces.resolve(a)
    assert len(label) == 3 and len({seg[0] for seg in label}) == 1
    part = label[0][0]
    assert kept_entries(label, {part: torch.tensor([0, 1, 2, 3])}).tolist() == [0, 1, 2, 3, 8, 9, 10, 11, 16, 17,
                                                                                 18, 19]
    assert b.dims(Ref(1))[2] is None and b.spaces.resolve(b.dims(Ref(1))[3]) == ((part, 0, 8, Fraction(1, 4)),)


def test_a_reshape_that_merges_two_channel_dims_freezes_both():
    b = builder([(1, 4, 3), (1, 12)])
    a, c = space(b, 4), space(b, 3)
    b.labels[0] = [None, a, c]
    sr.reshape(b, op("reshape", Ref(0), 1, 12, out=[1]))
    assert "reshape mixes channel dims" in frozen(b, a) and "reshape mixes channel dims" in frozen(b, c)
    assert b.dims(Ref(1)) == [None, None]


# ---- unbind, permute, expand ----


def test_unbind_freezes_the_dim_it_picks_from():
    b = builder([(3, 4), (4,), (4,), (4,)])
    a, c = space(b, 3), space(b, 4)
    b.labels[0] = [a, c]
    sr.unbind(b, op("unbind", Ref(0), 0, out=[1, 2, 3]))
    assert "unbind picks one channel" in frozen(b, a)
    assert all(b.dims(Ref(i)) == [c] for i in (1, 2, 3))


@pytest.mark.parametrize("name, args, out_shape, order", [
    ("permute", (0, 2, 1), (2, 4, 3), [0, 2, 1]),
    ("permute", ([2, 0, 1],), (4, 2, 3), [2, 0, 1]),
    ("transpose", (0, -1), (4, 3, 2), [2, 1, 0]),
    ("swapaxes", (1, 2), (2, 4, 3), [0, 2, 1]),
    ("mT", (), (2, 4, 3), [0, 2, 1]),
    ("movedim", (0, -1), (3, 4, 2), [1, 2, 0]),
    ("movedim", ([0, 1], [2, 0]), (3, 4, 2), [1, 2, 0]),
])
def test_permutes_reorder_the_labels(name, args, out_shape, order):
    b = builder([(2, 3, 4), out_shape])
    labels = [space(b, 2), space(b, 3), space(b, 4)]
    b.labels[0] = list(labels)
    sr.permute(b, op(name, Ref(0), *args, out=[1]))
    assert b.dims(Ref(1)) == [labels[k] for k in order]


def test_t_swaps_a_matrix():
    b = builder([(3, 4), (4, 3)])
    r, c = space(b, 3), space(b, 4)
    b.labels[0] = [r, c]
    sr.permute(b, op("t", Ref(0), out=[1]))
    assert b.dims(Ref(1)) == [c, r]


def test_T_on_three_dims_reverses_the_labels():
    b = builder([(2, 3, 4), (4, 3, 2)])
    labels = [space(b, 2), space(b, 3), space(b, 4)]
    b.labels[0] = list(labels)
    sr.permute(b, op("T", Ref(0), out=[1]))
    assert b.dims(Ref(1)) == labels[::-1]


@pytest.mark.filterwarnings("ignore:The use of `x.T`:UserWarning")
def test_a_reduction_over_channels_moved_by_T_freezes_the_group():
    class Gate(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(4, 6), nn.Linear(6, 2)

        def forward(self, x):
            h = self.a(x)  # (2, 3, 6)
            gate = h.T.mean(0) > 0  # (3, 2): the mean over the 6 channels of h
            return self.b(h) * gate.T.unsqueeze(-1)

    graph = build(Gate(), torch.randn(2, 3, 4))
    group = next(g for g in graph.groups if "a" in g.producers)
    assert group.frozen is not None and "mean reduces over channels" in group.frozen


def test_expand_keeps_equal_dims_and_freezes_repeated_channels():
    b = builder([(4, 1), (2, 4, 3), (4, 3), (4, 6)])
    a, c = space(b, 4), space(b, 3)
    b.labels[0] = [a, None]
    sr.expand(b, op("expand", Ref(0), 2, 4, 3, out=[1]))
    assert b.dims(Ref(1)) == [None, a, None] and not b.spaces.frozen
    b.labels[2] = [a, c]
    sr.expand(b, op("repeat", Ref(2), 1, 2, out=[3]))
    assert "repeat repeats channels" in frozen(b, c) and b.dims(Ref(3)) == [a, None]


# ---- reductions and pools ----


def test_a_reduction_over_channels_freezes_them_and_drops_the_dim():
    b = builder([(2, 4, 3), (2, 3), (2, 1, 3)])
    a, c = space(b, 4), space(b, 3)
    b.labels[0] = [None, a, c]
    sr.reduction(b, op("mean", Ref(0), 1, out=[1]))
    assert "mean reduces over channels" in frozen(b, a) and b.dims(Ref(1)) == [None, c]
    sr.reduction(b, op("sum", Ref(0), dim=[1], keepdim=True, out=[2]))
    assert b.dims(Ref(2)) == [None, None, c] and frozen(b, c) is None


def test_a_full_reduction_freezes_everything_and_max_of_two_tensors_is_elementwise():
    b = builder([(2, 4), (), (2, 4), (2, 4)])
    a = space(b, 4)
    b.labels[0] = [None, a]
    sr.reduction(b, op("sum", Ref(0), out=[1]))
    assert "sum reduces over channels" in frozen(b, a)
    c, d = space(b, 4), space(b, 4)
    b.labels[0], b.labels[2] = [None, c], [None, d]
    sr.reduction(b, op("max", Ref(0), Ref(2), out=[3]))
    assert same(b, c, d) and b.dims(Ref(3)) == [None, c] and frozen(b, c) is None


def test_pools_pass_batch_and_channels_and_clear_spatial_dims():
    b = builder([(1, 4, 6, 6), (1, 4, 3, 3), (1, 4, 3, 3)])
    a = space(b, 4)
    b.labels[0] = [None, a, space(b, 6), None]
    sr.pool(b, op("max_pool2d_with_indices", Ref(0), 2, out=[1, 2]))
    assert b.dims(Ref(1)) == [None, a, None, None] and 2 not in b.labels  # the indices get no labels


# ---- indexing, split, cat, stack ----


@pytest.mark.parametrize("index, out_shape, expect", [
    ((slice(None), slice(2, 6)), (2, 4, 3), [None, ((0, 2, 6, ONE),), "c"]),
    ((slice(None), slice(0, 8)), (2, 8, 3), [None, "a", "c"]),
    ((Ellipsis, 0), (2, 8), [None, "a"]),
    ((slice(None), None), (2, 1, 8, 3), [None, None, "a", "c"]),
])
def test_getitem_slices_labels_between_channels(index, out_shape, expect):
    b = builder([(2, 8, 3), out_shape])
    labels = {"a": space(b, 8), "c": space(b, 3)}
    b.labels[0] = [None, labels["a"], labels["c"]]
    sr.getitem(b, op("getitem", Ref(0), index, out=[1]))
    assert b.dims(Ref(1)) == [labels.get(e, e) if isinstance(e, str) else e for e in expect]


def test_getitem_freezes_picked_or_strided_channels_and_tensor_indices():
    b = builder([(2, 8, 3), (2, 3), (2, 4, 3), (2, 5, 3)])
    a, c = space(b, 8), space(b, 3)
    b.labels[0] = [None, a, c]
    sr.getitem(b, op("getitem", Ref(0), (slice(None), 1), out=[1]))
    assert "indexing picks one channel" in frozen(b, a) and b.dims(Ref(1)) == [None, c]
    b = builder([(2, 8, 3), (2, 3), (2, 4, 3), (2, 5, 3)])
    a, c = space(b, 8), space(b, 3)
    b.labels[0] = [None, a, c]
    sr.getitem(b, op("getitem", Ref(0), (slice(None), slice(None, None, 2)), out=[2]))
    assert "slicing cuts channels" in frozen(b, a) and b.dims(Ref(2)) == [None, None, c]
    sr.getitem(b, op("getitem", Ref(0), (slice(None), Ref(1)), out=[3]))
    assert "no channel rule" in frozen(b, c)


def test_getitem_through_a_channel_with_several_entries_freezes_it():
    b = builder([(2, 8), (2, 4)])
    s = b.spaces.new(4)
    b.labels[0] = [None, ((s, 0, 4, Fraction(2)),)]  # 2 entries per channel
    sr.getitem(b, op("getitem", Ref(0), (slice(None), slice(1, 5)), out=[1]))
    assert "slicing cuts channels" in b.spaces.frozen[s]


def test_split_of_a_whole_space_makes_each_part_its_own_space():
    b = builder([(2, 12), (2, 4), (2, 8)])
    a = space(b, 12)
    b.labels[0] = [None, a]
    sr.split(b, op("split", Ref(0), [4, 8], 1, out=[1, 2]))
    (p,), (q,) = b.dims(Ref(1))[1], b.dims(Ref(2))[1]
    assert (p[1:], q[1:]) == ((0, 4, ONE), (0, 8, ONE)) and p[0] != q[0]
    assert b.spaces.resolve(a) == ((p[0], 0, 4, ONE), (q[0], 0, 8, ONE))


def test_split_of_a_constrained_space_slices_it_and_narrow_starts_where_asked():
    b = builder([(2, 12), (2, 6), (2, 6), (2, 5)])
    a = space(b, 12)
    b.spaces.block[sid(a)] = 2  # heads: the space cannot be redefined as parts
    b.labels[0] = [None, a]
    sr.split(b, op("chunk", Ref(0), 2, dim=1, out=[1, 2]))
    assert b.dims(Ref(1))[1] == ((sid(a), 0, 6, ONE),) and b.dims(Ref(2))[1] == ((sid(a), 6, 12, ONE),)
    sr.split(b, op("narrow", Ref(0), 1, 2, 5, out=[3]))
    assert b.dims(Ref(3))[1] == ((sid(a), 2, 7, ONE),)


def test_split_through_a_channel_with_several_entries_freezes_it():
    b = builder([(2, 12), (2, 4), (2, 4), (2, 4)])
    s = b.spaces.new(4)
    b.labels[0] = [None, ((s, 0, 4, Fraction(3)),)]  # 3 entries per channel: chunks of 4 cut channels
    sr.split(b, op("chunk", Ref(0), 3, 1, out=[1, 2, 3]))
    assert "chunk cuts channels" in b.spaces.frozen[s]


def test_cat_lists_its_parts_and_couples_the_other_dims():
    b = builder([(2, 3, 5), (2, 4, 5), (2, 2, 5), (2, 9, 5)])
    a, c, d, e = space(b, 3), space(b, 5), space(b, 4), space(b, 5)
    b.labels[0], b.labels[1] = [None, a, c], [None, d, e]  # part 2 is unlabelled (a model input)
    sr.cat(b, op("cat", [Ref(0), Ref(1), Ref(2)], -2, out=[3]))
    assert b.dims(Ref(3))[1] == ((sid(a), 0, 3, ONE), (sid(d), 0, 4, ONE), (None, 0, 2, ONE))
    assert same(b, c, e) and "cannot change" in frozen(b, c)  # the unlabelled part's dim 2 meets c and e


def test_cat_of_unlabelled_parts_is_unlabelled():
    b = builder([(2, 3), (2, 4), (2, 7)])
    sr.cat(b, op("cat", [Ref(0), Ref(1)], 1, out=[2]))
    assert b.dims(Ref(2)) == [None, None]


def test_stack_couples_every_dim_and_adds_an_unlabelled_one():
    b = builder([(3, 4), (3, 4), (3, 2, 4)])
    a, c, d, e = space(b, 3), space(b, 4), space(b, 3), space(b, 4)
    b.labels[0], b.labels[1] = [a, c], [d, e]
    sr.stack(b, op("stack", [Ref(0), Ref(1)], 1, out=[2]))
    assert same(b, a, d) and same(b, c, e) and b.dims(Ref(2)) == [a, None, c]


# ---- no rule ----


def test_unsupported_freezes_and_reports_only_ops_that_touch_produced_channels():
    b = builder([(2, 4), (2, 4), (2, 3), (2, 3)])
    a, c = space(b, 4), space(b, 3)
    b.labels[0], b.labels[2] = [None, a], [None, c]
    b.mark_producer(a, "fc")
    sr.unsupported(b, op("cumprod", Ref(0), 0, out=[1]))
    sr.unsupported(b, op("cummax", Ref(2), 0, out=[3]))
    assert "op 'cumprod' in m has no channel rule" in frozen(b, a) and "'cummax'" in frozen(b, c)
    assert b.dims(Ref(1)) == [None, None]
    assert b.reported() == ["'cumprod' in m"]  # c is produced by no layer: not worth a report


def test_factories_hold_no_channels():
    b = builder([(2, 4), (2, 4), (2,)])
    a = space(b, 4)
    b.labels[0] = [None, a]
    sr.factory(b, op("gt", Ref(0), 0, out=[1]))
    sr.factory(b, op("argmax", Ref(0), 1, out=[2]))
    assert b.dims(Ref(1)) == [None, None] and b.dims(Ref(2)) == [None] and not b.spaces.frozen


# ---- end to end: cutting along the groups equals silencing the removed channels ----




def test_flatten_cut_keeps_each_channels_features(cut):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 3, 1), nn.ReLU(), nn.Flatten(), nn.Linear(12, 2)).eval()
    x = torch.randn(2, 2, 2, 2)
    pruned = cut(model, x, "0", [0, 2])
    torch.testing.assert_close(pruned[3].weight, model[3].weight[:, [0, 1, 2, 3, 8, 9, 10, 11]])
    with torch.no_grad():
        model[3].weight[:, 4:8] = 0
    torch.testing.assert_close(pruned(x), model(x))


class Fused(nn.Module):
    """One projection split into two parts read by different layers."""

    def __init__(self) -> None:
        super().__init__()
        self.proj, self.left, self.right = nn.Linear(4, 12), nn.Linear(4, 2), nn.Linear(8, 2)

    def forward(self, x):
        p, q = self.proj(x).split([self.left.in_features, self.right.in_features], dim=-1)
        return self.left(torch.relu(p)) + self.right(torch.relu(q))


def test_each_part_of_a_split_projection_is_pruned_on_its_own():
    torch.manual_seed(0)
    model, x = Fused().eval(), torch.randn(3, 4)
    graph = build(model, x)
    parts = sorted((g for g in graph.groups if "proj" in g.producers), key=lambda g: g.size)
    assert [g.size for g in parts] == [4, 8] and all(g.prunable for g in parts)
    pruned = copy.deepcopy(model)
    shrink(pruned, graph, {parts[1].id: torch.tensor([1, 2, 6])})
    assert pruned.proj.out_features == 7 and pruned.right.in_features == 3
    torch.testing.assert_close(pruned.proj.weight, model.proj.weight[[0, 1, 2, 3, 5, 6, 10]])
    with torch.no_grad():
        model.right.weight[:, [0, 3, 4, 5, 7]] = 0
    torch.testing.assert_close(pruned(x), model(x))


class Branches(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.mix = nn.Conv2d(3, 2, 1), nn.Conv2d(3, 3, 1), nn.Conv2d(5, 2, 1)

    def forward(self, x):
        return self.mix(torch.cat([torch.relu(self.a(x)), torch.relu(self.b(x))], dim=1))


def test_cat_cut_removes_the_inputs_of_the_branch_that_lost_channels(cut):
    torch.manual_seed(0)
    model, x = Branches().eval(), torch.randn(1, 3, 4, 4)
    pruned = cut(model, x, "b", [0, 2])
    assert pruned.mix.in_channels == 4
    torch.testing.assert_close(pruned.mix.weight, model.mix.weight[:, [0, 1, 2, 4]])
    with torch.no_grad():
        model.mix.weight[:, 3] = 0
    torch.testing.assert_close(pruned(x), model(x))


class Sequence(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed, self.conv = nn.Linear(4, 6), nn.Conv1d(6, 2, 1)

    def forward(self, x):  # (batch, time, 4) -> channels first for the conv
        return self.conv(torch.relu(self.embed(x)).transpose(1, 2))


def test_transpose_cut_follows_the_channels_to_the_conv_inputs(cut):
    torch.manual_seed(0)
    model, x = Sequence().eval(), torch.randn(2, 5, 4)
    pruned = cut(model, x, "embed", [1, 4])
    torch.testing.assert_close(pruned.conv.weight, model.conv.weight[:, [1, 4]])
    with torch.no_grad():
        model.conv.weight[:, [0, 2, 3, 5]] = 0
    torch.testing.assert_close(pruned(x), model(x))
