"""Width attributes after a cut (``slimtorch.graph.widths``), called directly on small hand-written models.

``rewrite_widths`` is given a channel graph and the kept channels of some groups; it must rewrite exactly the
integer attributes with a known width name whose value is a pruned group's old width or head count (and a
held ``config``'s fields), record them for ``slimtorch.load``, leave the rest, and warn instead of guessing
when one attribute stands for groups that now differ. ``common_scope`` and ``config_mismatches`` are checked
on their own. (End-to-end pruning of torchvision, timm and Hugging Face models is in
tests/prune/test_width_attributes.py.)
"""

import logging
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch import nn

from slimtorch.graph.groups import build
from slimtorch.graph.widths import _recount_kv_groups, common_scope, config_mismatches, rewrite_widths


class Config:
    """A Hugging Face style config: plain fields and ``to_dict``."""

    def __init__(self, hidden_size=8, intermediate_size=16):
        self.hidden_size, self.intermediate_size, self.num_labels = hidden_size, intermediate_size, 3

    def to_dict(self):
        return dict(vars(self))


class Block(nn.Module):
    def __init__(self, d=8, hidden=16):
        super().__init__()
        self.hidden_features = hidden
        self.fc1, self.fc2 = nn.Linear(d, hidden), nn.Linear(hidden, d)

    def forward(self, x):
        return x + self.fc2(torch.relu(self.fc1(x)))


class Net(nn.Module):
    """A residual stack: width 8 (``embed_dim``), MLPs of 16 (``intermediate_size``), a config with both."""

    def __init__(self):
        super().__init__()
        self.embed_dim, self.intermediate_size, self.depth, self.width = 8, 16, 2, 8
        self.config = Config()
        self.stem = nn.Linear(4, 8)
        self.blocks = nn.ModuleList([Block(), Block()])
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        x = self.stem(x)
        for block in self.blocks:
            x = block(x)
        return self.head(x)


def net_and_groups():
    model = Net()
    graph = build(model, torch.randn(2, 4))
    by = {p: g for g in graph.groups for p in g.producers}
    return model, graph, by["stem"], by["blocks.0.fc1"], by["blocks.1.fc1"]


def first(n):
    return torch.arange(n)


def test_nothing_cut_changes_nothing():
    model, graph, stream, mlp0, _ = net_and_groups()
    assert rewrite_widths(model, graph, {}) == []
    assert rewrite_widths(model, graph, {stream.id: first(8), mlp0.id: first(16)}) == []
    assert (model.embed_dim, model.blocks[0].hidden_features, model.config.hidden_size) == (8, 16, 8)
    assert "_slim_attrs" not in vars(model)


def test_model_and_layer_widths_follow_their_groups_and_are_recorded():
    model, graph, stream, mlp0, mlp1 = net_and_groups()
    assert stream.size == 8 and stream.prunable and {"stem", "blocks.0.fc2", "blocks.1.fc2"} <= set(stream.producers)
    done = rewrite_widths(model, graph, {stream.id: first(4), mlp0.id: first(8), mlp1.id: first(8)})
    assert sorted(done) == ["Net.embed_dim 8->4", "Net.intermediate_size 16->8", "blocks.0.hidden_features 16->8",
                            "blocks.1.hidden_features 16->8", "config.hidden_size 8->4",
                            "config.intermediate_size 16->8"]
    assert (model.embed_dim, model.intermediate_size) == (4, 8)
    assert [b.hidden_features for b in model.blocks] == [8, 8]
    assert (model.config.hidden_size, model.config.intermediate_size, model.config.num_labels) == (4, 8, 3)
    assert (model.depth, model.width) == (2, 8)  # not width names / not a group's width: left alone
    assert vars(model)["_slim_attrs"] == {"embed_dim": 4, "intermediate_size": 8, "config.hidden_size": 4,
                                          "config.intermediate_size": 8}
    assert vars(model.blocks[1])["_slim_attrs"] == {"hidden_features": 8}


def test_a_module_only_takes_the_widths_of_groups_inside_it():
    model, graph, _, mlp0, _ = net_and_groups()
    done = rewrite_widths(model, graph, {mlp0.id: first(12)})
    assert (model.blocks[0].hidden_features, model.blocks[1].hidden_features) == (12, 16)
    assert "blocks.1.hidden_features" not in " ".join(done)


def test_one_attribute_for_groups_that_now_differ_is_left_with_a_warning(caplog):
    model, graph, _, mlp0, mlp1 = net_and_groups()
    with caplog.at_level(logging.WARNING, logger="slimtorch"):
        done = rewrite_widths(model, graph, {mlp0.id: first(8), mlp1.id: first(4)})
    assert sorted(done) == ["blocks.0.hidden_features 16->8", "blocks.1.hidden_features 16->4"]
    assert model.intermediate_size == 16 and model.config.intermediate_size == 16
    assert "Net.intermediate_size=16 stands for 2 pruned groups that now have different widths [4, 8]" in caplog.text
    assert "config.intermediate_size=16" in caplog.text and "from_pretrained" in caplog.text


class Square(nn.Module):
    """Residual width and MLP width are both 16 and live on the same module: the name tells them apart."""

    def __init__(self):
        super().__init__()
        self.hidden_size = self.ffn_dim = 16
        self.stem, self.head = nn.Linear(4, 16), nn.Linear(16, 3)
        self.layers = nn.ModuleList([Block(16, 16), Block(16, 16)])

    def forward(self, x):
        x = self.stem(x)
        for layer in self.layers:
            x = layer(x)
        return self.head(x)


def test_equal_old_widths_are_told_apart_by_whether_the_group_spans_the_layers():
    model = Square()
    graph = build(model, torch.randn(2, 4))
    by = {p: g for g in graph.groups for p in g.producers}
    stream, mlps = by["stem"], [by["layers.0.fc1"], by["layers.1.fc1"]]
    done = rewrite_widths(model, graph, {stream.id: first(12), **{g.id: first(8) for g in mlps}})
    assert (model.hidden_size, model.ffn_dim) == (12, 8)
    assert {"Square.hidden_size 16->12", "Square.ffn_dim 16->8"} <= set(done)


class Attention(nn.Module):
    """Self-attention that reads its head counts and widths from attributes (as Hugging Face models do)."""

    def __init__(self, heads=4, kv_heads=4, head_dim=4):
        super().__init__()
        self.num_attention_heads, self.num_key_value_heads, self.head_dim = heads, kv_heads, head_dim
        self.num_key_value_groups = heads // kv_heads
        self.all_head_size = heads * head_dim
        self.q, self.o = nn.Linear(16, heads * head_dim), nn.Linear(heads * head_dim, 16)
        self.k, self.v = nn.Linear(16, kv_heads * head_dim), nn.Linear(16, kv_heads * head_dim)

    def forward(self, x):
        b, t, _ = x.shape
        q, k, v = (p(x).view(b, t, n, self.head_dim).transpose(1, 2) for p, n in (
            (self.q, self.num_attention_heads), (self.k, self.num_key_value_heads), (self.v, self.num_key_value_heads)))
        y = F.scaled_dot_product_attention(q, k, v, enable_gqa=self.num_key_value_groups > 1)
        return self.o(y.transpose(1, 2).reshape(b, t, self.all_head_size))


def head_group(model):
    graph = build(model, torch.randn(1, 5, 16))
    group = next(g for g in graph.groups if "q" in g.producers)
    return graph, group


def test_head_counts_and_widths_follow_whole_heads_and_head_dim_is_recorded():
    model = Attention()
    graph, group = head_group(model)
    assert (group.size, group.block) == (16, 4) and {"k", "v"} <= set(group.producers)
    done = rewrite_widths(model, graph, {group.id: torch.tensor([4, 5, 6, 7, 12, 13, 14, 15])})
    assert sorted(done) == ["Attention.all_head_size 16->8", "Attention.num_attention_heads 4->2",
                            "Attention.num_key_value_heads 4->2"]
    assert (model.num_attention_heads, model.num_key_value_heads, model.all_head_size) == (2, 2, 8)
    assert (model.head_dim, model.num_key_value_groups) == (4, 1)  # whole heads go: a head keeps its width
    assert vars(model)["_slim_attrs"] == {"num_attention_heads": 2, "num_key_value_heads": 2, "all_head_size": 8,
                                          "head_dim": 4}


def test_grouped_query_heads_count_each_key_value_head_with_its_query_heads():
    model = Attention(heads=4, kv_heads=2)
    graph, group = head_group(model)
    assert (group.size, group.block) == (8, 4)  # the query heads are the key/value heads, twice each
    rewrite_widths(model, graph, {group.id: torch.tensor([4, 5, 6, 7])})
    assert (model.num_attention_heads, model.num_key_value_heads, model.all_head_size) == (2, 1, 8)
    assert (model.head_dim, model.num_key_value_groups) == (4, 2)


def test_key_value_groups_are_recounted_from_the_holders_head_counts():
    done = []
    holder = SimpleNamespace(num_key_value_groups=2, num_attention_heads=6, num_key_value_heads=2)
    _recount_kv_groups(holder, "attn", lambda h, attr, value: setattr(h, attr, value), done)
    assert holder.num_key_value_groups == 3 and done == ["attn.num_key_value_groups 2->3"]
    holder = SimpleNamespace(num_kv_groups=1, num_heads=4, num_kv_heads=0)  # no key/value heads: left alone
    _recount_kv_groups(holder, "attn", lambda h, attr, value: setattr(h, attr, value), done)
    assert holder.num_kv_groups == 1 and len(done) == 1


def test_common_scope_is_the_owner_of_a_set_of_layers():
    assert common_scope(["blocks.0.attn.q", "blocks.0.attn.k", "blocks.0.attn.v"]) == "blocks.0.attn"
    assert common_scope(["blocks.0.attn.qkv"]) == "blocks.0.attn"  # one projection: its parent
    assert common_scope(["stem", "blocks.0.fc2", "blocks.1.fc2"]) == ""
    assert common_scope(["blocks.0.fc2", "blocks.1.fc2"]) == "blocks"
    assert common_scope([]) == "" and common_scope(["", "a.b"]) == "a"


BUILT_ON = []


class Pretrained(nn.Module):
    """A model that ``type(model)(model.config)`` rebuilds, like a Hugging Face ``PreTrainedModel``."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.fc = nn.Linear(config.hidden_size, config.intermediate_size)
        self.out = nn.Linear(config.intermediate_size, 2)
        BUILT_ON.append(self.fc.weight.device.type)

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        raise NotImplementedError


def test_config_mismatches_name_each_parameter_the_config_would_build_otherwise():
    model = Pretrained(Config())
    assert config_mismatches(model) == []
    model.fc, model.out = nn.Linear(8, 12), nn.Linear(12, 2)  # cut, but the config still says 16
    BUILT_ON.clear()
    assert config_mismatches(model) == ["fc.weight: config builds (16, 8), model has (12, 8)",
                                        "fc.bias: config builds (16,), model has (12,)",
                                        "out.weight: config builds (2, 16), model has (2, 12)"]
    assert BUILT_ON == ["meta"]  # the comparison model was not allocated
    model.config.intermediate_size = 12
    assert config_mismatches(model) == []


def test_config_mismatches_is_empty_when_the_config_cannot_rebuild_the_model():
    plain = nn.Linear(8, 4)
    plain.config = Config()  # no from_pretrained: not a model built from a config
    assert config_mismatches(plain) == []

    class NeedsMore(Pretrained):
        def __init__(self, config, extra):
            super().__init__(config)

    model = NeedsMore(Config(), 1)
    model.fc = nn.Linear(8, 12)
    assert config_mismatches(model) == []
