"""SparseLinear: exact products, save/load, counting, and the measured dense-vs-sparse switch."""

import pytest
import torch
from torch import nn

import slimtorch as st
from slimtorch.measure.latency import Timing
from slimtorch.prune.sparse_linear import SparseLinear, use_sparse_kernels
from slimtorch.summary import last_summary


def sparse_linear_layer(sparsity=0.95, shape=(64, 48)):
    torch.manual_seed(0)
    lin = nn.Linear(shape[1], shape[0])
    with torch.no_grad():
        lin.weight.mul_(torch.rand(shape) > sparsity)
    return lin


def test_sparse_linear_matches_dense_on_any_leading_shape():
    lin = sparse_linear_layer()
    sparse = SparseLinear.from_linear(lin)
    for x in (torch.randn(5, 48), torch.randn(2, 3, 48), torch.randn(48)):
        torch.testing.assert_close(sparse(x), lin(x), atol=1e-5, rtol=1e-5)
    params, nonzero = sparse.weight_counts()
    assert params == 64 * 48 + 64 and nonzero == int((lin.weight != 0).sum()) + 64


def test_sparse_linear_save_load_exact_and_compact(tmp_path):
    model = nn.Sequential(sparse_linear_layer(0.9, (256, 256)), nn.ReLU(), nn.Linear(256, 4))
    reference = model(torch.ones(2, 256))
    model[0] = SparseLinear.from_linear(model[0])
    path = st.save(model, tmp_path / "m")
    dense = st.save(nn.Sequential(nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 4)), tmp_path / "d")
    assert path.stat().st_size < 0.2 * dense.stat().st_size
    loaded = st.load(path, nn.Sequential(nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 4)))
    assert isinstance(loaded[0], SparseLinear)
    assert torch.equal(loaded[0].dense_weight(), model[0].dense_weight())
    torch.testing.assert_close(loaded(torch.ones(2, 256)), reference, atol=1e-5, rtol=1e-5)


def test_switch_follows_the_measurement(monkeypatch):
    from slimtorch.prune import sparse_linear

    model = nn.Sequential(sparse_linear_layer(0.95), nn.ReLU(), sparse_linear_layer(0.2, (8, 64)))
    x = torch.randn(4, 48)
    out = model(x)
    timings = iter([{"dense_ms": 2.0, "sparse_ms": 1.0}])  # only layer 0 is sparse enough to be tried
    monkeypatch.setattr(sparse_linear, "time_layer", lambda lin, inp: next(timings))
    whole = {"dense": Timing([3.0]), "sparse": Timing([2.0])}
    monkeypatch.setattr(sparse_linear, "time_alternating", lambda fns, **kw: whole)
    report = use_sparse_kernels(model, x)
    assert set(report) == {"0", "model"} and report["0"]["switched"] and report["0"]["speedup"] == 2.0
    assert report["model"]["switched"] and report["model"]["speedup"] == 1.5
    assert isinstance(model[0], SparseLinear) and type(model[2]) is nn.Linear
    torch.testing.assert_close(model(x), out, atol=1e-5, rtol=1e-5)
    slow = nn.Sequential(sparse_linear_layer(0.95))
    monkeypatch.setattr(sparse_linear, "time_layer", lambda lin, inp: {"dense_ms": 1.0, "sparse_ms": 3.0})
    assert not use_sparse_kernels(slow, x)["0"]["switched"] and type(slow[0]) is nn.Linear
    # a layer that wins alone but not inside the whole model is switched back
    monkeypatch.setattr(sparse_linear, "time_layer", lambda lin, inp: {"dense_ms": 3.0, "sparse_ms": 1.0})
    whole.update({"dense": Timing([2.0]), "sparse": Timing([2.5])})
    report = use_sparse_kernels(slow, x)
    assert not report["0"]["switched"] and not report["model"]["switched"] and type(slow[0]) is nn.Linear


def test_kernel_auto_through_prune_times_real_layers():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 4))
    x = torch.randn(8, 64)
    st.prune(model, st.UnstructuredPruning(sparsity=0.97, scope="layer", kernel="auto"), example_inputs=x)
    kernels = last_summary(model).details["kernels"]
    assert {"0", "2"} <= set(kernels)
    for name, row in kernels.items():
        if name == "model":
            continue
        assert row["dense_ms"] > 0 and row["sparse_ms"] > 0
        assert isinstance(model.get_submodule(name), SparseLinear) == row["switched"]
    with pytest.raises(st.ConfigError, match="example_inputs"):
        st.prune(nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 2)), st.UnstructuredPruning(kernel="auto"))
