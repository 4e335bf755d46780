"""Layer subclasses met in ported models, through the pruning and low-rank families.

A TensorFlow port pads "same" in its convolutions' own ``forward`` (here a hand-written subclass and timm's
``Conv2dSame``); the low-rank layers that replace them must pad too, or the residual add breaks. A subclass
whose ``forward`` slimtorch does not know is left alone by every family that swaps layers, named in the log
and in the step's summary; the masking families prune it only when its forward multiplies with the weight as
stored (timm's ``StdConv2d`` standardizes its weight, so a zero there is no pruned weight).
"""

import math

import pytest
import torch
import torch.nn.functional as F
from timm.layers import Conv2dSame, StdConv2d
from torch import nn

import slimtorch as st
from slimtorch.lowrank.modules import _Factorized
from slimtorch.prune.semistructured import nm_violations
from slimtorch.prune.sparse_linear import SparseLinear, use_sparse_kernels
from slimtorch.summary import last_summary


class TFConv(nn.Conv2d):
    """A TensorFlow port's convolution: built with padding 0, pads TF-"same" (extra row/column after) itself."""

    def forward(self, x):
        pads = []
        for size, k, s, d in zip(x.shape[:-3:-1], self.kernel_size[::-1], self.stride[::-1], self.dilation[::-1],
                                 strict=True):
            total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
            pads += [total // 2, total - total // 2]
        return F.conv2d(F.pad(x, pads), self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


class DoubledLinear(nn.Linear):
    """An unknown subclass that still multiplies with its weight as stored."""

    def forward(self, x):
        return 2 * super().forward(x)


class TFNet(nn.Module):
    """Stem conv stride 2 and a residual block of same-padded 3x3 convs: 27x27 -> 14x14, then a head."""

    def __init__(self, conv=TFConv, block_conv=None):
        super().__init__()
        block_conv = block_conv or conv
        self.stem = conv(3, 16, 3, stride=2)
        self.bn = nn.BatchNorm2d(16)
        self.conv1 = block_conv(16, 16, 3)
        self.conv2 = block_conv(16, 16, 3)
        self.head = nn.Linear(16, 10)

    def forward(self, x):
        x = F.relu(self.bn(self.stem(x)))
        x = F.relu(x + self.conv2(F.relu(self.conv1(x))))  # the residual add needs same-sized outputs
        return self.head(x.mean((2, 3)))


def tucker_weight(out, cin, k, ranks, gen):
    """A conv weight of low multilinear rank: exactly compressible by channel SVD, Tucker-2 and spatial SVD."""
    core = torch.randn(ranks[1], ranks[0], k, k, generator=gen)
    u_out, u_in = torch.randn(out, ranks[1], generator=gen), torch.randn(cin, ranks[0], generator=gen)
    return torch.einsum("abij,oa,cb->ocij", core, u_out, u_in) / math.sqrt(cin * k * k)


def tf_net(conv):
    torch.manual_seed(0)
    model = TFNet(conv).eval()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for layer in (model.stem, model.conv1, model.conv2):
            layer.weight.copy_(tucker_weight(layer.out_channels, layer.in_channels, 3, (2, 2), gen))
    return model


CONVS = [pytest.param(TFConv, id="own-subclass"), pytest.param(Conv2dSame, id="timm-Conv2dSame")]
X = torch.randn(2, 3, 27, 27, generator=torch.Generator().manual_seed(2))


@pytest.mark.parametrize("conv", CONVS)
@pytest.mark.parametrize("method", ["svd", "tucker", "spatial_svd"])
def test_lowrank_keeps_tf_same_padding(conv, method, tmp_path):
    model = tf_net(conv)
    ref = model(X)
    st.decompose(model, st.LowRank(method=method, energy=0.999999))  # the exact ranks
    factored = [m for m in (model.stem, model.conv1, model.conv2) if isinstance(m, _Factorized)]
    assert len(factored) == 3 and all(m.same_pad for m in factored)
    out = model(X)
    assert out.shape == ref.shape
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
    assert set(last_summary(model).changed) == {"stem", "conv1", "conv2"}
    loaded = st.load(st.save(model, tmp_path / "m"), tf_net(conv))
    assert all(loaded.get_submodule(n).same_pad for n in ("stem", "conv1", "conv2"))
    torch.testing.assert_close(loaded(X), out, rtol=0, atol=0)


@pytest.mark.parametrize("conv", CONVS)
@pytest.mark.parametrize("config", [st.UnstructuredPruning(sparsity=0.5), st.NMPruning(n=2, m=4)],
                         ids=["unstructured", "2:4"])
def test_masking_prunes_tf_same_convs(conv, config, tmp_path):
    model = tf_net(conv)
    shape = model(X).shape
    st.prune(model, config)
    out = model(X)
    assert out.shape == shape and torch.isfinite(out).all()
    assert type(model.conv1) is conv  # the layer and its forward are kept
    if isinstance(config, st.NMPruning):
        assert all(nm_violations(getattr(model, n).weight, 2, 4) == 0 for n in ("conv1", "conv2"))
        assert dict(last_summary(model).skipped) == {"stem": "input size 27 is not a multiple of m=4"}
    else:
        assert last_summary(model).details["overall"] == pytest.approx(0.5, abs=1e-3)
    loaded = st.load(st.save(st.make_permanent(model), tmp_path / "m"), tf_net(conv))
    torch.testing.assert_close(loaded(X), out, rtol=0, atol=0)


def unknown_net():
    torch.manual_seed(0)
    model = TFNet(conv=TFConv, block_conv=StdConv2d).eval()
    model.head = nn.Sequential(DoubledLinear(16, 16), nn.ReLU(), nn.Linear(16, 10))
    return model


def test_lowrank_leaves_unknown_subclasses_alone(caplog):
    model = unknown_net()
    ref = model(X)
    with caplog.at_level("INFO", logger="slimtorch"):
        st.decompose(model, st.LowRank(rank_ratio=0.5, keep_head=False))
    assert type(model.conv1) is StdConv2d and type(model.head[0]) is DoubledLinear
    skipped = last_summary(model).skipped
    assert {"conv1", "conv2", "head.0"} <= set(skipped) and "StdConv2d" in skipped["conv1"]
    assert "skipped head.0 (" in caplog.text and "DoubledLinear" in caplog.text
    assert model(X).shape == ref.shape


def test_masking_refuses_a_forward_that_transforms_the_weight(caplog):
    model = unknown_net()
    with caplog.at_level("INFO", logger="slimtorch"):
        st.prune(model, st.UnstructuredPruning(sparsity=0.5))
    summary = last_summary(model)
    assert set(summary.skipped) == {"conv1", "conv2"} and "transformed" in summary.skipped["conv1"]
    assert "head.0" in summary.changed and float((model.head[0].weight == 0).float().mean()) > 0
    assert float((model.conv1.weight == 0).float().mean()) == 0
    assert "skipped conv1" in caplog.text


def test_sparse_kernels_leave_unknown_subclasses_alone(caplog):
    model = nn.Sequential(DoubledLinear(32, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4))
    st.make_permanent(st.prune(model, st.UnstructuredPruning(sparsity=0.9, prune_head=True)))
    x = torch.randn(8, 32)
    ref = model(x)
    with caplog.at_level("INFO", logger="slimtorch"):
        use_sparse_kernels(model, x, min_speedup=0.0)  # every known layer switches
    assert type(model[0]) is DoubledLinear and isinstance(model[2], SparseLinear)
    summary = last_summary(model)
    assert set(summary.skipped) == {"0"} and set(summary.changed) == {"2", "4"}
    assert "skipped 0 (" in caplog.text
    torch.testing.assert_close(model(x), ref, rtol=1e-5, atol=1e-5)
