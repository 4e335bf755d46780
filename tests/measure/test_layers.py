"""Per-layer table: which modules make rows, and each row's parameters, sparsity, bits and rank."""

import pytest
import torch
from torch import nn

import slimtorch as st
from slimtorch.lowrank.modules import LowRankLinear
from slimtorch.measure.layers import ROOT, layer_table


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(20, 8)
        self.conv = nn.Conv1d(8, 16, 3)
        self.norm = nn.LayerNorm(16)  # a 1-D weight: not a layer row
        self.low = LowRankLinear(16, 32, rank=4)
        self.low_head = nn.Linear(32, 16)  # its name starts with "low": not mistaken for a factor of `low`
        self.quant = nn.Sequential(nn.Linear(16, 32))
        self.half = nn.Linear(32, 4).half()


def _net() -> Net:
    torch.manual_seed(0)
    net = Net()
    with torch.no_grad():
        net.conv.weight[:, :, 0] = 0  # 16 * 8 of 16 * 8 * 3 weights
        net.conv.bias[:4] = 0
        net.low_head.weight.zero_()
    st.quantize(net.quant, st.WeightOnlyQuant(bits=4, group_size=16))
    return net


def test_rows_give_the_parameters_sparsity_bits_and_rank_of_each_layer():
    net = _net()
    rows = layer_table(net)
    assert [(r["name"], r["type"]) for r in rows] == [
        ("emb", "Embedding"), ("conv", "Conv1d"), ("low", "LowRankLinear"), ("low_head", "Linear"),
        ("quant.0", "WeightOnlyQuantLinear"), ("half", "Linear"),
    ]
    by_name = {r.pop("name"): r for r in rows}
    conv_params = 16 * 8 * 3 + 16
    assert by_name["emb"] == {"type": "Embedding", "params": 160, "nonzero": 160, "sparsity": 0.0, "bits": 32,
                              "rank": None}
    assert by_name["conv"] == {"type": "Conv1d", "params": conv_params, "nonzero": conv_params - 16 * 8 - 4,
                               "sparsity": 1.0 - (conv_params - 132) / conv_params, "bits": 32, "rank": None}
    assert by_name["conv"]["sparsity"] == pytest.approx(132 / 400)
    # the factorized container is one row: its two factors' weights, its rank; it has no `weight`, so no bits
    low = 16 * 4 + 4 * 32 + 32
    assert by_name["low"] == {"type": "LowRankLinear", "params": low, "nonzero": low, "sparsity": 0.0, "bits": None,
                              "rank": 4}
    assert by_name["low_head"]["params"] == 32 * 16 + 16 and by_name["low_head"]["nonzero"] == 16
    assert by_name["low_head"]["sparsity"] == pytest.approx(512 / 528)
    q = net.quant[0]
    nonzero = int(torch.count_nonzero(q.dequantized_weight())) + int(torch.count_nonzero(q.bias))
    assert by_name["quant.0"] == {"type": "WeightOnlyQuantLinear", "params": 16 * 32 + 32, "nonzero": nonzero,
                                  "sparsity": 1.0 - nonzero / 544, "bits": 4, "rank": None}
    assert by_name["half"]["bits"] == 16 and by_name["half"]["params"] == 32 * 4 + 4


def test_factors_of_a_nested_low_rank_layer_make_no_rows_of_their_own():
    model = nn.Sequential(nn.Sequential(LowRankLinear(8, 8, rank=2), nn.ReLU()), nn.Linear(8, 2))
    assert [(r["name"], r["rank"]) for r in layer_table(model)] == [("0.0", 2), ("1", None)]


def test_a_model_that_is_one_layer_is_one_row():
    rows = layer_table(nn.Linear(4, 3))
    assert [(r["name"], r["type"], r["params"]) for r in rows] == [(ROOT, "Linear", 15)]
    low = LowRankLinear(8, 8, rank=2)  # a compressed layer as the whole model: its factors are inside its row
    assert [(r["name"], r["rank"]) for r in layer_table(low)] == [(ROOT, 2)]


def test_a_model_without_weight_bearing_layers_has_no_rows():
    assert layer_table(nn.Sequential(nn.ReLU(), nn.LayerNorm(4), nn.BatchNorm2d(3), nn.Flatten())) == []


def test_a_layer_of_only_zeros_is_fully_sparse():
    model = nn.Sequential(nn.Linear(4, 3, bias=False))
    nn.init.zeros_(model[0].weight)
    assert layer_table(model) == [{"name": "0", "type": "Linear", "params": 12, "nonzero": 0, "sparsity": 1.0,
                                   "bits": 32, "rank": None}]
