"""Coupled groups on the patterns: residual adds, concat, flatten, depthwise, grouped conv, heads, tokens."""

import sys
from pathlib import Path

import torch
from torch import nn

from slimtorch.graph.attention import convert_attention
from slimtorch.graph.groups import build
from slimtorch.zoo.models import DigitsCNN

sys.path.insert(0, str(Path(__file__).parents[1] / "scenarios"))
from scenario_models import SCENARIOS  # noqa: E402


def graph_of(name):
    make, inputs = SCENARIOS[name]
    torch.manual_seed(0)
    model = make().eval()
    convert_attention(model)
    return build(model, inputs())


def group_with(graph, producer):
    return next(g for g in graph.groups if producer in g.producers)


def members(group):
    return {(m.param, m.dim) for m in group.members}


def test_residual_add_couples_both_sides_and_every_consumer():
    g = build(DigitsCNN(), torch.randn(1, 1, 16, 16))
    stream = group_with(g, "stem.0")
    assert stream.producers == ["stem.0", "layer1.conv2"] and stream.prunable
    assert {("stem.1.weight", 0), ("layer1.conv1.weight", 1), ("layer1.bn2.bias", 0), ("down2.0.weight", 1)} <= members(
        stream)
    assert group_with(g, "head").frozen.startswith("it reaches the model's output")


def test_concat_and_flatten_map_channels_to_entries():
    g = graph_of("densenet")
    stem = group_with(g, "stem")
    bn = next(m for m in stem.members if m.param == "dense.1.bn.weight")
    assert [seg[0] for seg in bn.label][0] == stem.id and len(bn.label) == 2  # [stem | dense.0 output]
    fc = next(m for m in group_with(g, "trans.2").members if m.param == "fc.weight")
    assert fc.label[0][3] == 16  # each channel of the transition conv is 4x4 features


def test_depthwise_and_squeeze_excite_tie_to_the_expansion():
    g = graph_of("mobilenet")
    grp = group_with(g, "blocks.0.expand.0")
    assert {"blocks.0.expand.0", "blocks.0.se.expand"} <= set(grp.producers)
    assert {("blocks.0.dw.0.weight", 0), ("blocks.0.se.reduce.weight", 1), ("blocks.0.project.0.weight", 1)} <= members(
        grp)


def test_grouped_conv_prunes_its_filters_and_inputs_evenly():
    g = graph_of("grouped")
    assert group_with(g, "grouped").groups == 4 and group_with(g, "grouped").prunable
    assert group_with(g, "reduce").groups == 4 and group_with(g, "reduce").prunable
    assert g.grouped["grouped.weight"] == (4, group_with(g, "reduce").id)


def test_grouped_conv_keeps_the_right_columns_in_each_group():
    from slimtorch.graph.surgery import grouped_columns

    w = torch.arange(4 * 2 * 1.0).reshape(4, 2, 1, 1)  # 2 groups: rows 0-1 read inputs 0-1, rows 2-3 inputs 2-3
    cut = grouped_columns(w, 2, torch.tensor([1, 2]))
    assert cut[:, 0, 0, 0].tolist() == [1.0, 3.0, 4.0, 6.0]


def test_layer_scale_class_token_and_heads():
    cn = graph_of("convnext")
    assert ("blocks.0.gamma", 0) in members(group_with(cn, "stem"))
    vit = graph_of("vit")
    stream = group_with(vit, "patch")
    assert {("cls_token", 2), ("pos_embed", 2), ("norm.weight", 0)} <= members(stream) and stream.prunable
    heads = group_with(vit, "blocks.0.attn.q_proj")
    assert heads.block == 8 and set(heads.producers) >= {"blocks.0.attn.k_proj", "blocks.0.attn.v_proj"}
    gpt = graph_of("gpt")
    fused = group_with(gpt, "h.0.attn.c_attn")
    assert fused.block == 8 and len(next(m for m in fused.members if m.param == "h.0.attn.c_attn.weight").label) == 3


def test_unknown_ops_freeze_what_they_touch_and_are_reported():
    class Odd(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(4, 6), nn.Linear(6, 2)

        def forward(self, x):
            return self.b(torch.cumprod(self.a(x), dim=0))

    g = build(Odd(), torch.randn(3, 4))
    assert "cumprod" in g.unsupported[0]
    assert not group_with(g, "a").prunable
