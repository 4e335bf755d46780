"""Model size: parameter counts by hand (shared tensors, buffers, compressed modules) and the saved file's bytes."""

import os
import tempfile

import torch
from torch import nn

import slimtorch as st
from slimtorch.lowrank.modules import LowRankLinear
from slimtorch.measure.size import artifact_bytes, count_params


def test_count_params_of_a_known_model_equals_the_hand_count():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 4 * 4, 10))
    with torch.no_grad():
        model[0].weight[:4] = 0  # 4 filters of 3 x 3 x 3: 108 zeros
        model[4].weight[:, :32] = 0  # 10 x 32: 320 zeros
    conv, bn, linear = 8 * 3 * 3 * 3 + 8, 8 + 8, 128 * 10 + 10  # BatchNorm's running statistics are buffers
    total = conv + bn + linear
    assert total == 1530
    # BatchNorm's bias starts at zero: 8 more zeros
    assert count_params(model) == (total, total - 108 - 320 - 8)


def test_a_tensor_tied_between_two_modules_counts_once():
    emb, head = nn.Embedding(10, 4), nn.Linear(4, 10)
    head.weight = emb.weight  # [10, 4] both
    assert count_params(nn.Sequential(emb, head)) == (10 * 4 + 10, 10 * 4 + 10)


def test_a_module_with_weight_counts_reports_its_own_tensors_and_its_children_count_as_usual():
    class Packed(nn.Module):
        def __init__(self):
            super().__init__()
            self.scale = nn.Parameter(torch.ones(5))  # its own: covered by weight_counts, not counted again
            self.register_buffer("codes", torch.zeros(50, dtype=torch.uint8))
            self.child = nn.Linear(2, 3)

        def weight_counts(self):
            return 100, 60

    model = nn.Sequential(Packed(), nn.Linear(3, 1))
    assert count_params(model) == (100 + (2 * 3 + 3) + (3 + 1), 60 + 9 + 4)


def test_low_rank_and_int4_layers_count_their_logical_weights():
    assert count_params(LowRankLinear(16, 32, rank=4)) == (16 * 4 + 4 * 32 + 32,) * 2
    model = nn.Sequential(nn.Linear(64, 32))
    st.quantize(model, st.WeightOnlyQuant(bits=4, group_size=32))
    layer = model[0]
    assert layer.qweight.numel() == 32 * 32  # two int4 codes per stored byte
    nonzero = int(torch.count_nonzero(layer.dequantized_weight())) + int(torch.count_nonzero(layer.bias))
    assert count_params(model) == (64 * 32 + 32, nonzero)


def test_artifact_bytes_is_the_size_of_the_file_save_writes(tmp_path):
    torch.manual_seed(0)
    dense = nn.Sequential(nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10))
    sparse = nn.Sequential(nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10))
    with torch.no_grad():
        sparse[0].weight[torch.rand(256, 256) < 0.9] = 0
    int8 = st.quantize(nn.Sequential(nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10)), st.WeightOnlyQuant())
    sizes = {}
    for name, model in (("dense", dense), ("sparse", sparse), ("int8", int8)):
        sizes[name] = artifact_bytes(model)
        assert sizes[name] == os.path.getsize(st.save(model, tmp_path / name))
    weights = (256 * 256 + 256 + 256 * 10 + 10) * 4
    assert weights < sizes["dense"] < weights + 64 * 1024  # float32 weights plus a header
    assert sizes["sparse"] < sizes["dense"] / 2  # mostly zeros: stored as a bitmask and values
    assert sizes["int8"] < sizes["dense"] / 3  # one byte per weight


def test_artifact_bytes_leaves_no_temporary_file(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    assert artifact_bytes(nn.Linear(8, 4)) > (8 * 4 + 4) * 4
    assert os.listdir(tmp_path) == []
