import os

import pytest
import torch
from torch import nn

import slimtorch as st
from slimtorch.io.load import read_manifest
from slimtorch.io.manifest import set_tracked_attr


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.cls_token = nn.Parameter(torch.randn(1, 8))
        self.fc = nn.Linear(8, 4)
        self.heads = 2

    def forward(self, x):
        x = self.bn(self.conv(x)).mean((2, 3)) + self.cls_token
        return self.fc(x)


def test_round_trip_gives_identical_outputs(tmp_path):
    model = Net().eval()
    x = torch.randn(2, 3, 8, 8)
    path = st.save(model, tmp_path / "net")
    assert path.name == "net.safetensors" and path.is_file()
    loaded = st.load(path, model=Net())
    torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    assert not loaded.training


def test_reshaped_modules_and_parameters_are_rebuilt(tmp_path):
    model = Net().eval()
    # shrink like structured pruning would: 8 -> 5 channels everywhere
    keep = torch.arange(5)
    conv = nn.Conv2d(3, 5, 3, padding=1)
    conv.weight.data, conv.bias.data = model.conv.weight.data[keep], model.conv.bias.data[keep]
    model.conv, model.bn = conv, nn.BatchNorm2d(5).eval()
    model.cls_token = nn.Parameter(model.cls_token.data[:, keep])
    fc = nn.Linear(5, 4)
    fc.weight.data, fc.bias.data = model.fc.weight.data[:, keep], model.fc.bias.data
    model.fc = fc
    set_tracked_attr(model, "heads", 1)
    x = torch.randn(2, 3, 8, 8)
    st.save(model, tmp_path / "small")
    loaded = st.load(tmp_path / "small", model=Net())
    assert loaded.conv.out_channels == 5 and loaded.cls_token.shape == (1, 5) and loaded.heads == 1
    torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)


def test_sparse_tensors_are_stored_compactly_and_exactly(tmp_path):
    dense = nn.Linear(256, 256, bias=False)
    sparse = nn.Linear(256, 256, bias=False)
    with torch.no_grad():
        mask = torch.rand(256, 256) < 0.1
        sparse.weight.mul_(mask)
    d = os.path.getsize(st.save(dense, tmp_path / "dense"))
    s = os.path.getsize(st.save(sparse, tmp_path / "sparse"))
    assert s <= 0.2 * d
    loaded = st.load(tmp_path / "sparse", model=nn.Linear(256, 256, bias=False))
    assert torch.equal(loaded.weight, sparse.weight)


def test_tied_weights_stay_tied(tmp_path):
    model = nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 10, bias=False))
    model[1].weight = model[0].weight
    st.save(model, tmp_path / "tied")
    fresh = nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 10, bias=False))
    loaded = st.load(tmp_path / "tied", model=fresh)
    assert torch.equal(loaded[0].weight, model[0].weight) and torch.equal(loaded[1].weight, model[1].weight)


def test_truncated_file_is_refused(tmp_path):
    path = st.save(Net(), tmp_path / "net")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(st.ArtifactError, match="truncated"):
        st.load(path, model=Net())


def test_tampered_weights_are_refused(tmp_path):
    path = st.save(Net(), tmp_path / "net")
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(st.ArtifactError, match="checksum"):
        st.load(path, model=Net())


def test_missing_file_and_foreign_safetensors(tmp_path):
    with pytest.raises(st.ArtifactError, match="no saved model"):
        st.load(tmp_path / "nothing", model=Net())
    from safetensors.torch import save_file

    save_file({"a": torch.zeros(2)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(st.ArtifactError, match="not a slimtorch artifact"):
        read_manifest(tmp_path / "plain.safetensors")


def test_save_is_atomic_and_leaves_no_temporary_files(tmp_path):
    st.save(Net(), tmp_path / "net")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["net.safetensors"]


def test_saved_file_has_the_usual_permissions(tmp_path):
    path = st.save(nn.Linear(3, 2), tmp_path / "m")
    mask = os.umask(0)
    os.umask(mask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~mask  # not mkstemp's private 0600


def test_very_sparse_layers_are_stored_as_positions_and_smaller_than_a_bitmask(tmp_path):
    layer = nn.Linear(1024, 1024, bias=False)
    with torch.no_grad():
        layer.weight.mul_(torch.rand(1024, 1024) < 0.01)  # 99% sparse
    path = st.save(layer, tmp_path / "m")
    assert read_manifest(path)["sparse"]["weight"]["form"] == "index"
    nnz = int(layer.weight.count_nonzero())
    assert os.path.getsize(path) < 1024 * 1024 / 8 + nnz * 4  # below what the bitmask form alone would take
    assert torch.equal(st.load(path, model=nn.Linear(1024, 1024, bias=False)).weight, layer.weight)


# ---- loading refuses another architecture, and accepts every change slimtorch makes ----


def test_the_issue_example_names_the_first_differing_module(tmp_path):
    path = st.save(nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2)), tmp_path / "m")
    with pytest.raises(st.ArtifactError, match=r"first difference at `1` \(saved ReLU, model has no such module\)"):
        st.load(path, model=nn.Sequential(nn.Linear(3, 3)))


@pytest.mark.parametrize("model, message", [
    (nn.Sequential(nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 2)), r"`1` \(saved ReLU, model has Tanh\)"),
    (nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2), nn.ReLU()),
     r"`3` \(the saved model has no such module, model has ReLU\)"),
    (nn.ModuleList([nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2)]), r"the root module \(saved Sequential, model has "
                                                                   r"ModuleList\)"),
])
def test_other_architectures_are_refused_naming_the_module_and_both_types(tmp_path, model, message):
    path = st.save(nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2)), tmp_path / "m")
    with pytest.raises(st.ArtifactError, match=message + ".*build the same architecture"):
        st.load(path, model=model)


def test_wider_saved_tensors_than_the_model_are_refused(tmp_path):
    path = st.save(nn.Sequential(nn.Linear(8, 8)), tmp_path / "m")
    with pytest.raises(st.ArtifactError, match=r"tensor '0.weight' is \[8, 8\] in the file but \[3, 3\] in the model"):
        st.load(path, model=nn.Sequential(nn.Linear(3, 3)))
    path = st.save(Net(), tmp_path / "net")
    wide = Net()
    wide.cls_token = nn.Parameter(torch.randn(1, 4))
    with pytest.raises(st.ArtifactError, match="tensor 'cls_token' is \\[1, 8\\] in the file but \\[1, 4\\]"):
        st.load(path, model=wide)


def test_tensors_missing_on_either_side_are_named(tmp_path):
    extra = Net()
    extra.register_buffer("scale", torch.ones(3))
    with pytest.raises(st.ArtifactError, match="the model's tensor 'scale' is not in the file"):
        st.load(st.save(Net(), tmp_path / "a"), model=extra)
    with pytest.raises(st.ArtifactError, match="the file holds tensor 'scale'"):
        st.load(st.save(extra, tmp_path / "b"), model=Net())


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList([nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 32))
                                     for _ in range(3)])
        self.head = nn.Linear(32, 4)

    def forward(self, x):
        for block in self.blocks:
            x = x + block(x)
        return self.head(x)


class CNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                                      nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.fc = nn.Linear(16, 4)

    def forward(self, x):
        return self.fc(self.features(x).mean((2, 3)))


def _compressions():
    mlp_x, cnn_x = torch.randn(8, 32), torch.randn(4, 3, 8, 8)
    calib = [torch.randn(8, 32) for _ in range(2)]
    return {
        "structured": (MLP, mlp_x, lambda m: st.prune(m, st.StructuredPruning(ratio=0.5), example_inputs=mlp_x)),
        "layers": (MLP, mlp_x, lambda m: st.prune(m, st.LayerPruning(num_layers=2), example_inputs=mlp_x)),
        "unstructured": (MLP, mlp_x, lambda m: st.make_permanent(st.prune(m, st.UnstructuredPruning(sparsity=0.9)))),
        "dynamic": (MLP, mlp_x, lambda m: st.quantize(m, st.DynamicQuant())),
        "int4": (MLP, mlp_x, lambda m: st.quantize(m, st.WeightOnlyQuant(bits=4, group_size=32))),
        "static-cnn": (CNN, cnn_x, lambda m: st.quantize(m, st.StaticQuant(), data=[cnn_x], example_inputs=cnn_x)),
        "lowrank": (MLP, mlp_x, lambda m: st.decompose(m, st.LowRank(rank=4))),
        "lowrank-cnn": (CNN, cnn_x, lambda m: st.decompose(m, st.LowRank(rank=4, method="tucker"))),
        "binary": (MLP, mlp_x, lambda m: st.quantize(m, st.Binarize(), data=calib, example_inputs=mlp_x)),
        "pruned-then-int8": (MLP, mlp_x, lambda m: st.quantize(
            st.prune(m, st.StructuredPruning(ratio=0.5), example_inputs=mlp_x), st.DynamicQuant())),
    }


@pytest.mark.parametrize("name", sorted(_compressions()))
def test_every_slimtorch_change_loads_into_a_fresh_original_architecture(tmp_path, name):
    arch, x, compress = _compressions()[name]
    torch.manual_seed(0)
    model = arch().eval()
    compress(model)
    model.eval()
    loaded = st.load(st.save(model, tmp_path / name), model=arch())
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)


class Scaled(nn.Linear):
    mode = "plain"  # a class-level default that slimtorch may record per instance (like same_pad)


def test_tracked_attributes_with_class_level_defaults_are_set_again(tmp_path):
    model = nn.Sequential(Scaled(4, 4))
    set_tracked_attr(model[0], "mode", "same")
    loaded = st.load(st.save(model, tmp_path / "m"), model=nn.Sequential(Scaled(4, 4)))
    assert loaded[0].mode == "same" and Scaled.mode == "plain"
