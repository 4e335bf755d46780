"""The layer channel rules of ``slimtorch.graph.rules`` and their dispatch table.

Each rule runs on a hand-made trace (tensor ids, shapes, parameter names) so that the labels it reads and
writes can be checked exactly: which weight dim couples with the input channels, which one produces new
channels, how depthwise/grouped convolutions and grouped-query attention map channels. A few end-to-end
checks then cut a real model along the groups the rules build and compare it with the dense model whose
removed channels are silenced.
"""

from fractions import Fraction

import pytest
import torch
from torch import nn

from slimtorch.graph import rules
from slimtorch.graph import shape_rules as sr
from slimtorch.graph.groups import _Builder
from slimtorch.graph.surgery import kept_entries
from slimtorch.graph.trace import Op, Ref, Trace

ONE = Fraction(1)


def builder(shapes, params=None):
    """A builder over a hand-made trace: tensor ``i`` has ``shapes[i]``; ``params`` maps ids to names."""
    return _Builder(Trace(shapes={i: tuple(s) for i, s in enumerate(shapes)}, params=dict(params or {})))


def space(b, n):
    """The label of a fresh space of ``n`` channels (what a previous layer's output carries)."""
    return ((b.spaces.new(n), 0, n, ONE),)


def resolved(b, label):
    return b.spaces.resolve(label)


def root(b, label):
    """The one base space a label covers entirely, one entry per channel."""
    (seg,) = b.spaces.resolve(label)
    assert seg[1] == 0 and seg[2] == b.spaces.size[seg[0]] and seg[3] == 1, seg
    return seg[0]


def same(b, x, y):
    return b.spaces.resolve(x) == b.spaces.resolve(y)


def op(name, *args, out=(), module="m", **kwargs):
    return Op(name, tuple(args), kwargs, list(out), module)


# ---- linear, conv, transposed conv ----


def test_linear_couples_input_features_and_produces_output_features():
    # 0: x (2, 4), 1: weight (6, 4), 2: bias (6), 3: y (2, 6)
    b = builder([(2, 4), (6, 4), (6,), (2, 6)], {1: "fc.weight", 2: "fc.bias"})
    a = space(b, 4)
    b.labels[0] = [None, a]
    rules.linear(b, op("linear", Ref(0), Ref(1), Ref(2), out=[3], module="fc"))
    w0, w1 = b.dims(Ref(1))
    assert same(b, w1, a) and not same(b, w0, a)
    assert same(b, b.dims(Ref(2))[0], w0)
    assert b.dims(Ref(3)) == [None, w0]
    assert b.producers == [(w0, "fc")] and root(b, w0) in b.spaces.producer
    assert not b.spaces.frozen


def test_linear_without_bias_and_with_keyword_weight():
    b = builder([(3, 5, 4), (2, 4), (3, 5, 2)], {1: "fc.weight"})
    a = space(b, 4)
    b.labels[0] = [None, None, a]
    rules.linear(b, op("linear", Ref(0), weight=Ref(1), out=[2], module="fc"))
    w0, w1 = b.dims(Ref(1))
    assert same(b, w1, a) and b.dims(Ref(2)) == [None, None, w0]


def test_linear_on_an_untracked_input_freezes_the_weight_columns():
    b = builder([(2, 4), (6, 4), (2, 6)], {1: "fc.weight"})
    rules.linear(b, op("linear", Ref(0), Ref(1), out=[2], module="fc"))  # x: no label (a model input)
    w0, w1 = b.dims(Ref(1))
    assert "cannot change" in b.spaces.frozen[root(b, w1)]
    assert root(b, w0) not in b.spaces.frozen


def conv_args(x, w, bias=None, groups=1):
    return (x, w, bias, (1, 1), (0, 0), (1, 1), groups)  # F.conv2d(input, weight, bias, stride, padding, dil, groups)


def test_plain_conv_couples_input_channels_and_produces_filters():
    # 0: x (1, 3, 5, 5), 1: weight (8, 3, 3, 3), 2: bias (8), 3: y (1, 8, 3, 3)
    b = builder([(1, 3, 5, 5), (8, 3, 3, 3), (8,), (1, 8, 3, 3)], {1: "c.weight", 2: "c.bias"})
    a = space(b, 3)
    b.labels[0] = [None, a, None, None]
    rules.conv(b, op("conv2d", *conv_args(Ref(0), Ref(1), Ref(2)), out=[3], module="c"))
    wd = b.dims(Ref(1))
    assert same(b, wd[1], a) and same(b, b.dims(Ref(2))[0], wd[0])
    assert b.dims(Ref(3)) == [None, wd[0], None, None]
    assert b.producers == [(wd[0], "c")]
    assert b.grouped_inputs == [] and not b.spaces.groups


def test_depthwise_conv_ties_each_filter_to_its_input_channel():
    # groups = in_channels = 4, channel multiplier 2: filters 2c and 2c+1 read input channel c
    b = builder([(1, 4, 5, 5), (8, 1, 3, 3), (1, 8, 3, 3)], {1: "dw.weight"})
    a = space(b, 4)
    b.labels[0] = [None, a, None, None]
    rules.conv(b, op("conv2d", *conv_args(Ref(0), Ref(1), groups=4), out=[2], module="dw"))
    w0 = resolved(b, b.dims(Ref(1))[0])
    assert w0 == ((a[0][0], 0, 4, Fraction(2)),)
    assert kept_entries(w0, {a[0][0]: torch.tensor([1, 3])}).tolist() == [2, 3, 6, 7]
    assert resolved(b, b.dims(Ref(2))[1]) == w0
    assert b.producers == []  # a depthwise conv makes no channels of its own


def test_depthwise_conv_on_misaligned_channels_freezes_them():
    # the input holds 4 entries for 8 channels (two heads' worth each): x3 filters per entry cannot be cut
    b = builder([(1, 4, 5, 5), (12, 1, 3, 3), (1, 12, 3, 3)], {1: "dw.weight"})
    s = b.spaces.new(8)
    b.labels[0] = [None, ((s, 0, 8, Fraction(1, 2)),), None, None]
    rules.conv(b, op("conv2d", *conv_args(Ref(0), Ref(1), groups=4), out=[2], module="dw"))
    assert "depthwise channels are not aligned" in b.spaces.frozen[s]


def test_grouped_conv_removes_inputs_and_filters_evenly_per_group():
    # 4 input channels in 2 groups of 2; 6 filters in 2 groups of 3
    b = builder([(1, 4, 5, 5), (6, 2, 3, 3), (1, 6, 3, 3)], {1: "g.weight"})
    a = space(b, 4)
    b.labels[0] = [None, a, None, None]
    rules.conv(b, op("conv2d", *conv_args(Ref(0), Ref(1), groups=2), out=[2], module="g"))
    w0 = b.dims(Ref(1))[0]
    assert b.grouped_inputs == [(1, 2, a)]
    assert b.spaces.groups == {a[0][0]: 2, root(b, w0): 2}
    assert b.producers == [(w0, "g")] and b.dims(Ref(2))[1] == w0


def test_conv_transpose_reads_weight_dim_0_and_produces_dim_1():
    # ConvTranspose2d(3, 5): weight is (in=3, out=5, k, k)
    b = builder([(1, 3, 4, 4), (3, 5, 2, 2), (5,), (1, 5, 8, 8)], {1: "up.weight", 2: "up.bias"})
    a = space(b, 3)
    b.labels[0] = [None, a, None, None]
    args = (Ref(0), Ref(1), Ref(2), (2, 2), (0, 0), (0, 0), 1, (1, 1))  # ..., output_padding, groups, dilation
    rules.conv_transpose(b, op("conv_transpose2d", *args, out=[3], module="up"))
    w0, w1 = b.dims(Ref(1))[:2]
    assert same(b, w0, a) and same(b, b.dims(Ref(2))[0], w1)
    assert b.dims(Ref(3)) == [None, w1, None, None] and b.producers == [(w1, "up")]


def test_grouped_conv_transpose_has_no_rule_and_freezes_its_input():
    b = builder([(1, 4, 4, 4), (4, 3, 2, 2), (1, 6, 8, 8)], {1: "up.weight"})
    a = space(b, 4)
    b.labels[0] = [None, a, None, None]
    rules.conv_transpose(b, op("conv_transpose2d", Ref(0), Ref(1), None, 2, 0, 0, 2, out=[2], module="up"))
    assert "'conv_transpose2d' in up has no channel rule" in b.spaces.frozen[a[0][0]]
    assert b.dims(Ref(2)) == [None] * 4 and b.pending


# ---- norms and embeddings ----


@pytest.mark.parametrize("name, stats", [("batch_norm", True), ("instance_norm", False)])
def test_batch_norm_vectors_follow_the_channel_dim(name, stats):
    shapes = [(2, 4, 3, 3), (4,), (4,), (4,), (4,), (2, 4, 3, 3)]
    b = builder(shapes, {1: "bn.running_mean", 2: "bn.running_var", 3: "bn.weight", 4: "bn.bias"})
    a = space(b, 4)
    b.labels[0] = [None, a, None, None]
    mean, var = (Ref(1), Ref(2)) if stats else (None, None)
    rules.batch_norm(b, op(name, Ref(0), mean, var, Ref(3), Ref(4), False, 0.1, 1e-5, out=[5], module="bn"))
    for i in (1, 2, 3, 4) if stats else (3, 4):
        assert same(b, b.dims(Ref(i))[0], a), i
    assert b.dims(Ref(5)) == [None, a, None, None] and b.producers == []


def test_layer_norm_couples_every_normalized_dim():
    # LayerNorm((5, 6)) on (2, 5, 6): the weight's two dims follow the input's last two
    b = builder([(2, 5, 6), (5, 6), (5, 6), (2, 5, 6)], {1: "ln.weight", 2: "ln.bias"})
    t, c = space(b, 5), space(b, 6)
    b.labels[0] = [None, t, c]
    rules.layer_norm(b, op("layer_norm", Ref(0), [5, 6], Ref(1), Ref(2), 1e-5, out=[3], module="ln"))
    for i in (1, 2):
        w0, w1 = b.dims(Ref(i))
        assert same(b, w0, t) and same(b, w1, c)
    assert b.dims(Ref(3)) == [None, t, c]


def test_rms_norm_weight_follows_the_last_dim():
    b = builder([(2, 5, 6), (6,), (2, 5, 6)], {1: "norm.weight"})
    c = space(b, 6)
    b.labels[0] = [None, None, c]
    rules.layer_norm(b, op("rms_norm", Ref(0), [6], Ref(1), 1e-6, out=[2], module="norm"))
    assert same(b, b.dims(Ref(1))[0], c)


def test_group_norm_prunes_channels_evenly_across_its_groups():
    b = builder([(2, 6, 3, 3), (6,), (6,), (2, 6, 3, 3)], {1: "gn.weight", 2: "gn.bias"})
    a = space(b, 6)
    b.labels[0] = [None, a, None, None]
    rules.group_norm(b, op("group_norm", Ref(0), 3, Ref(1), Ref(2), 1e-5, out=[3], module="gn"))
    assert b.spaces.groups == {a[0][0]: 3}
    assert same(b, b.dims(Ref(1))[0], a) and same(b, b.dims(Ref(2))[0], a)


def test_embedding_produces_the_table_width_and_leaves_the_vocabulary():
    b = builder([(2, 7), (10, 4), (2, 7, 4)], {1: "emb.weight"})
    rules.embedding(b, op("embedding", Ref(0), Ref(1), out=[2], module="emb"))
    vocab, width = b.dims(Ref(1))
    assert b.dims(Ref(2)) == [None, None, width] and b.producers == [(width, "emb")]
    assert root(b, vocab) not in b.spaces.producer and not b.spaces.frozen


# ---- matmul, addmm, attention ----


def test_matmul_contracts_inner_dims_and_couples_equal_batch_dims():
    # a (2, 3, 4, 5) @ c (1, 3, 5, 6) -> (2, 3, 4, 6); dim 0 broadcasts (1 vs 2) and is not coupled
    b = builder([(2, 3, 4, 5), (1, 3, 5, 6), (2, 3, 4, 6)])
    h1, h2, k1, k2, n = space(b, 3), space(b, 3), space(b, 5), space(b, 5), space(b, 6)
    b.labels[0] = [None, h1, None, k1]
    b.labels[1] = [None, h2, k2, n]
    rules.matmul(b, op("matmul", Ref(0), Ref(1), out=[2]))
    assert same(b, k1, k2) and same(b, h1, h2) and not same(b, h1, k1)
    assert b.dims(Ref(2)) == [None, h1, None, n]


def test_matmul_with_a_vector_has_no_rule():
    b = builder([(5,), (5, 6), (6,)])
    n = space(b, 6)
    b.labels[1] = [None, n]
    rules.matmul(b, op("matmul", Ref(0), Ref(1), out=[2]))
    assert "no channel rule" in b.spaces.frozen[n[0][0]]


def test_addmm_is_a_transposed_linear_that_produces_only_from_parameters():
    # Hugging Face Conv1D: bias + x @ W with W (in=4, out=6)
    b = builder([(6,), (3, 4), (4, 6), (3, 6)], {0: "c.bias", 2: "c.weight"})
    a = space(b, 4)
    b.labels[1] = [None, a]
    rules.addmm(b, op("addmm", Ref(0), Ref(1), Ref(2), out=[3], module="c"))
    w0, w1 = b.dims(Ref(2))
    assert same(b, w0, a) and same(b, b.dims(Ref(0))[0], w1)
    assert b.dims(Ref(3)) == [None, w1] and b.producers == [(w1, "c")]
    # the same op on an activation (not a weight) produces no channels
    b = builder([(6,), (3, 4), (4, 6), (3, 6)], {0: "c.bias"})
    b.labels[1] = [None, space(b, 4)]
    rules.addmm(b, op("addmm", Ref(0), Ref(1), Ref(2), out=[3], module="c"))
    assert b.producers == []


def attention(q_heads, kv_heads, mask=False):
    """q (1, Hq, 5, 8), k and v (1, Hkv, 5, 8), each with its own head and head-width spaces."""
    shapes = [(1, q_heads, 5, 8), (1, kv_heads, 5, 8), (1, kv_heads, 5, 8), (1, q_heads, 5, 8), (5, 5)]
    b = builder(shapes)
    heads = [space(b, q_heads), space(b, kv_heads), space(b, kv_heads)]
    widths = [space(b, 8) for _ in range(3)]
    for i in range(3):
        b.labels[i] = [None, heads[i], None, widths[i]]
    m = space(b, 5)
    b.labels[4] = [m, None]
    args = (Ref(0), Ref(1), Ref(2)) + ((Ref(4),) if mask else ())
    rules.sdpa(b, op("scaled_dot_product_attention", *args, out=[3], module="attn"))
    return b, heads, widths, m


def test_attention_couples_heads_of_q_k_v_and_query_with_key_widths():
    b, (hq, hk, hv), (wq, wk, wv), _ = attention(4, 4)
    assert same(b, hq, hk) and same(b, hk, hv)
    assert same(b, wq, wk) and not same(b, wq, wv)
    assert b.dims(Ref(3)) == [None, hq, None, wv] and not b.spaces.frozen


def test_attention_mask_freezes_its_dims():
    b, _, _, m = attention(4, 4, mask=True)
    assert "attention mask" in b.spaces.frozen[m[0][0]]


def test_grouped_query_attention_defines_query_heads_as_repeated_key_value_heads():
    b, (hq, hk, hv), _, _ = attention(4, 2)
    assert same(b, hk, hv)
    kv = hk[0][0]
    assert resolved(b, hq) == ((b.spaces.find(kv), 0, 2, Fraction(2)),)
    # keeping key/value head 1 keeps query heads 2 and 3
    assert kept_entries(resolved(b, hq), {b.spaces.find(kv): torch.tensor([1])}).tolist() == [2, 3]
    assert not b.spaces.frozen


def test_uneven_grouped_query_attention_freezes_every_head():
    b, (hq, hk, hv), _, _ = attention(3, 2)
    for label in (hq, hk, hv):
        assert "3 query heads share 2 key/value heads unevenly" in b.spaces.frozen[b.spaces.find(label[0][0])]


# ---- the dispatch table ----


def test_rule_for_dispatches_by_op_name_and_falls_back_to_freezing():
    expected = {"linear": rules.linear, "conv1d": rules.conv, "conv3d": rules.conv,
                "conv_transpose1d": rules.conv_transpose, "instance_norm": rules.batch_norm,
                "rms_norm": rules.layer_norm, "bmm": rules.matmul, "mm": rules.matmul, "addmm": rules.addmm,
                "scaled_dot_product_attention": rules.sdpa, "chunk": sr.split, "narrow": sr.split,
                "concat": sr.cat, "expand_as": sr.expand, "repeat": sr.expand, "getitem": sr.getitem}
    for name, rule in expected.items():
        assert rules.rule_for(Op(name, (), {}, [])) is rule, name
    for names, rule in ((sr.ELEMENTWISE, sr.elementwise), (sr.FACTORIES, sr.factory), (sr.RESHAPES, sr.reshape),
                        (sr.PERMUTES, sr.permute), (sr.REDUCTIONS, sr.reduction), (sr.POOLS, sr.pool)):
        assert all(rules.RULES[n] is rule for n in names), rule.__name__
    for name in ("cumprod", "conv_transpose3d", "embedding_bag", "pad", ""):
        assert rules.rule_for(Op(name, (), {}, [])) is sr.unsupported


def test_op_name_families_do_not_overlap():
    """A name in two families would silently get the rule of the one merged last into RULES."""
    families = [sr.ELEMENTWISE, sr.FACTORIES, sr.RESHAPES, sr.PERMUTES, sr.REDUCTIONS, sr.POOLS]
    assert sum(map(len, families)) == len(set().union(*families))
    layers = {n for n, r in rules.RULES.items() if r.__module__ == rules.__name__}
    assert not layers & set().union(*families)


# ---- end to end: cutting along the groups equals silencing the removed channels ----




def test_linear_cut_equals_silencing_the_removed_neurons(cut):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3)).eval()
    x = torch.randn(5, 4)
    pruned = cut(model, x, "0", [0, 2, 3])
    assert (pruned[0].out_features, pruned[2].in_features) == (3, 3)
    torch.testing.assert_close(pruned[2].weight, model[2].weight[:, [0, 2, 3]])
    with torch.no_grad():
        model[2].weight[:, [1, 4, 5]] = 0
    torch.testing.assert_close(pruned(x), model(x))


def test_depthwise_cut_keeps_each_kept_channels_filters(cut):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.Conv2d(4, 8, 3, padding=1, groups=4), nn.ReLU(),
                          nn.Conv2d(8, 2, 1)).eval()
    x = torch.randn(2, 3, 6, 6)
    pruned = cut(model, x, "0", [1, 3])
    assert (pruned[1].in_channels, pruned[1].out_channels, pruned[1].groups) == (2, 4, 2)
    torch.testing.assert_close(pruned[1].weight, model[1].weight[[2, 3, 6, 7]])
    with torch.no_grad():
        model[3].weight[:, [0, 1, 4, 5]] = 0
    torch.testing.assert_close(pruned(x), model(x), atol=1e-5, rtol=1e-5)


def test_conv_transpose_cut_equals_silencing_the_removed_filters(cut):
    torch.manual_seed(0)
    model = nn.Sequential(nn.ConvTranspose2d(3, 6, 2, stride=2), nn.ReLU(), nn.Conv2d(6, 2, 1)).eval()
    x = torch.randn(1, 3, 4, 4)
    pruned = cut(model, x, "0", [0, 1, 4])
    assert pruned[0].weight.shape == (3, 3, 2, 2) and pruned[0].out_channels == 3
    with torch.no_grad():
        model[2].weight[:, [2, 3, 5]] = 0
    torch.testing.assert_close(pruned(x), model(x), atol=1e-5, rtol=1e-5)


def test_embedding_cut_equals_silencing_the_removed_features(cut):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(10, 6), nn.Linear(6, 3)).eval()
    ids = torch.randint(0, 10, (2, 5))
    pruned = cut(model, ids, "0", [0, 2, 5])
    assert pruned[0].embedding_dim == 3 and pruned[0].weight.shape == (10, 3)
    with torch.no_grad():
        model[1].weight[:, [1, 3, 4]] = 0
    torch.testing.assert_close(pruned(ids), model(ids))
