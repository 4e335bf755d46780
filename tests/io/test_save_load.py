import json
import os
import struct

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


def test_tampered_manifest_cannot_name_arbitrary_types(tmp_path):
    path = st.save(Net(), tmp_path / "net")
    data = path.read_bytes()
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8 : 8 + n])
    manifest = json.loads(header["__metadata__"]["slimtorch"])
    manifest["modules"]["fc"] = {"type": "os.system", "args": {"command": "echo hi"}}
    header["__metadata__"]["slimtorch"] = json.dumps(manifest)
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + n :])
    with pytest.raises(st.ArtifactError, match="does not know"):
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
