"""NMSparseLinear: same function as the pruned half-precision Linear, saved and loaded exactly; 2:4 kernels are
switched only on a CUDA GPU and only where measured faster (the CUDA tests run only with a GPU)."""

import copy

import pytest
import torch
from torch import nn

import slimtorch as st
from slimtorch.prune.nm_linear import NMSparseLinear, nm_unsupported_reason, use_nm_kernels
from slimtorch.prune.semistructured import nm_violations

cuda = pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability()[0] < 8,
                          reason="needs a CUDA GPU with sparse tensor cores (compute capability 8.0+)")


def _pruned_mlp(width: int = 128, dtype: torch.dtype = torch.float16) -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(width, 2 * width), nn.ReLU(), nn.Linear(2 * width, width), nn.ReLU(),
                          nn.Linear(width, 10))
    st.prune(model, st.NMPruning(n=2, m=4, keep_masks=False))
    return model.to(dtype)


def test_from_linear_computes_the_same_on_cpu():
    model = _pruned_mlp(dtype=torch.float32)
    linear = model[0]
    layer = NMSparseLinear.from_linear(linear.to(torch.bfloat16), "0")
    x = torch.randn(5, 128, dtype=torch.bfloat16)
    assert torch.equal(layer(x), linear(x))
    params, nonzero = layer.weight_counts()
    assert params == 128 * 256 + 256
    assert nonzero == 128 * 256 // 2 + 256  # exactly 2 of every 4 weights kept (random init has no zeros)


def test_save_load_round_trip(tmp_path):
    model = _pruned_mlp(dtype=torch.float16)
    model[0] = NMSparseLinear.from_linear(model[0], "0")
    path = st.save(model, tmp_path / "m")
    fresh = nn.Sequential(nn.Linear(128, 256), nn.ReLU(), nn.Linear(256, 128), nn.ReLU(), nn.Linear(128, 10))
    back = st.load(path, fresh)
    assert isinstance(back[0], NMSparseLinear) and back[0].dtype_name == "float16"
    assert torch.equal(back[0].weight, model[0].weight) and torch.equal(back[0].bias, model[0].bias)
    assert nm_violations(back[0].weight, 2, 4) == 0
    x = torch.randn(3, 128, dtype=torch.float16)
    assert torch.equal(back(x), model(x))


def test_errors_name_the_layer_and_the_way_out():
    with pytest.raises(st.UnsupportedModelError, match="'fc'.*half"):
        NMSparseLinear.from_linear(nn.Linear(8, 4), "fc")
    with pytest.raises(st.UnsupportedModelError, match="'fc'.*NMPruning"):
        NMSparseLinear.from_linear(nn.Linear(8, 4).half(), "fc")  # dense: breaks 2:4
    with pytest.raises(st.ConfigError, match="dtype"):
        NMSparseLinear(8, 4, dtype="float32")
    model = _pruned_mlp()
    with pytest.raises(st.ConfigError, match="example_inputs"):
        use_nm_kernels(model, None)
    with pytest.raises(st.UnsupportedModelError, match="NVIDIA GPU"):
        use_nm_kernels(model, torch.randn(4, 128, dtype=torch.float16))
    assert "cpu" in nm_unsupported_reason("cpu")


@cuda
def test_packed_product_matches_dense_on_cuda():
    model = _pruned_mlp(width=256).cuda()
    layer = NMSparseLinear.from_linear(model[0], "0")
    x = torch.randn(64, 256, dtype=torch.float16, device="cuda")
    torch.testing.assert_close(layer(x), model[0](x), rtol=1e-2, atol=1e-2)  # fp16 accumulation order differs
    assert layer._packed is not None
    layer.cpu()
    assert layer._packed is None  # moved: packed again on the next CUDA call
    torch.testing.assert_close(layer(x.cpu()).float(), model[0](x).cpu().float(), rtol=1e-2, atol=1e-2)


@cuda
def test_use_nm_kernels_switches_only_measured_winners():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4096, 4096), nn.ReLU(), nn.Linear(4096, 4096), nn.ReLU(), nn.Linear(4096, 10))
    st.prune(model, st.NMPruning(n=2, m=4, keep_masks=False))
    model = model.half().cuda()
    x = torch.randn(8192, 4096, dtype=torch.float16, device="cuda")
    reference = copy.deepcopy(model)
    results = use_nm_kernels(model, x)
    for name in ("0", "2"):
        r = results[name]
        assert r["switched"] == isinstance(model.get_submodule(name), NMSparseLinear)
        if "speedup" in r and r["switched"]:
            assert r["speedup"] >= 1.05 and results["model"]["speedup"] >= 1.05
    with torch.inference_mode():
        torch.testing.assert_close(model(x), reference(x), rtol=2e-2, atol=2e-2)
