import copy

import numpy as np
import pytest
import torch
from torch import nn

import slimtorch as st
from slimtorch.lowrank.layers import Layer
from slimtorch.measure.layers import layer_table
from slimtorch.measure.size import count_params


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv_a = nn.Conv2d(3, 16, 3, padding=1)
        self.conv_b = nn.Conv2d(16, 16, 3, stride=2, padding=1, bias=False)
        self.conv_c = nn.Conv2d(16, 16, (3, 5), padding=(1, 2))
        self.fc = nn.Linear(16 * 4 * 4, 32)
        self.head = nn.Linear(32, 5)

    def forward(self, x):
        x = torch.relu(self.conv_a(x))
        x = torch.relu(self.conv_b(x))  # (B, 16, 4, 4)
        x = torch.relu(self.conv_c(x))
        return self.head(torch.relu(self.fc(x.flatten(1))))


def _factorized(seed: int = 0) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(seed)
    model = Net().eval()
    original = copy.deepcopy(model)
    for name, method, rank in (("conv_a", "svd", 6), ("conv_b", "tucker", (8, 8)), ("conv_c", "spatial_svd", 8),
                               ("fc", "svd", 8)):
        layer = Layer(name, model.get_submodule(name), method)
        setattr(model, name, layer.build(rank))
    return original, model


@pytest.mark.parametrize("name, method, rank", [("conv_a", "svd", 16), ("conv_b", "tucker", (16, 16)),
                                                ("conv_c", "spatial_svd", 48), ("fc", "svd", 32)])
def test_full_rank_reproduces_the_layer_outputs_within_1e5(name, method, rank):
    torch.manual_seed(0)
    model = Net().eval()
    original = model.get_submodule(name)
    built = Layer(name, original, method).build(rank)
    x = torch.randn(4, 3, 8, 8)
    inputs = {}
    original.register_forward_pre_hook(lambda m, a: inputs.update(x=a[0]))
    model(x)
    assert (built(inputs["x"]) - original(inputs["x"])).abs().max() < 1e-5


def test_save_load_round_trip_of_every_factorized_module(tmp_path):
    _, model = _factorized()
    x = torch.randn(2, 3, 8, 8)
    path = st.save(model, tmp_path / "lowrank")
    loaded = st.load(path, model=Net())
    assert type(loaded.conv_b).__name__ == "Tucker2Conv2d" and loaded.conv_b.ranks == (8, 8)
    assert type(loaded.conv_c).__name__ == "SpatialSVDConv2d" and loaded.fc.rank == 8
    torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)


def test_same_outputs_in_train_and_eval_and_gradients_reach_the_factors():
    _, model = _factorized()
    x = torch.randn(3, 3, 8, 8)
    with torch.no_grad():
        y_eval = model.eval()(x)
    model.train()
    y_train = model(x)
    torch.testing.assert_close(y_train, y_eval)
    y_train.square().mean().backward()
    for name in ("conv_a.first", "conv_b.core", "conv_c.vertical", "fc.first", "fc.second"):
        grad = model.get_submodule(name).weight.grad
        assert grad is not None and grad.abs().sum() > 0


def test_parameter_counts_and_layer_table_show_ranks():
    original, model = _factorized()
    before, after = count_params(original)[0], count_params(model)[0]
    expected = sum(p.numel() for p in model.parameters())
    assert after == expected < before
    rows = {r["name"]: r for r in layer_table(model)}
    assert rows["fc"]["rank"] == 8 and rows["fc"]["params"] == 8 * (256 + 32) + 32
    assert rows["conv_b"]["type"] == "Tucker2Conv2d" and rows["conv_b"]["rank"] == 8
    assert "fc.first" not in rows


def test_onnx_export_runs_in_onnxruntime_and_agrees(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    _, model = _factorized()
    x = torch.randn(2, 3, 8, 8)
    path = tmp_path / "lowrank.onnx"
    torch.onnx.export(model, (x,), str(path), input_names=["x"], dynamo=True)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (y,) = session.run(None, {"x": x.numpy()})
    np.testing.assert_allclose(y, model(x).detach().numpy(), atol=1e-5)
