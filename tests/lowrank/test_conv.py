import pytest
import torch
from torch import nn

from slimtorch.lowrank import conv
from slimtorch.lowrank.modules import LowRankConv2d, SpatialSVDConv2d, Tucker2Conv2d
from slimtorch.lowrank.svd import discarded_energy, factors, spectrum, whitening

SETTINGS = [
    dict(stride=1, padding=1, dilation=1, padding_mode="zeros"),
    dict(stride=2, padding=(1, 2), dilation=1, padding_mode="zeros"),
    dict(stride=1, padding=2, dilation=2, padding_mode="reflect"),
    dict(stride=1, padding="same", dilation=1, padding_mode="zeros"),
]


def _conv(k=(3, 3), cin=6, cout=8, **kw) -> nn.Conv2d:
    torch.manual_seed(0)
    return nn.Conv2d(cin, cout, k, bias=True, **kw).double()


def _load(module: nn.Module, tensors: dict, bias: torch.Tensor) -> nn.Module:
    last = list(module._modules)[-1]
    module.double().load_state_dict({**tensors, f"{last}.bias": bias})
    return module


def _args(c: nn.Conv2d) -> dict:
    return dict(kernel_size=c.kernel_size, stride=c.stride, padding=c.padding, dilation=c.dilation, bias=True,
                padding_mode=c.padding_mode)


@pytest.mark.parametrize("kw", SETTINGS)
def test_full_rank_spatial_svd_reproduces_the_convolution(kw):
    c = _conv(**kw)
    x = torch.randn(2, 6, 11, 9, dtype=torch.float64)
    full = min(8 * 3, 6 * 3)
    vertical, horizontal = conv.spatial_weights(*factors(spectrum(conv.spatial_matrix(c.weight)), full), c.weight.shape)
    m = _load(SpatialSVDConv2d(6, 8, full, **_args(c)), {"vertical.weight": vertical, "horizontal.weight": horizontal},
              c.bias.detach())
    assert torch.allclose(m(x), c(x), atol=1e-10)


@pytest.mark.parametrize("kw", SETTINGS)
def test_full_rank_tucker2_and_channel_svd_reproduce_the_convolution(kw):
    c = _conv(**kw)
    x = torch.randn(2, 6, 11, 9, dtype=torch.float64)
    reduce, core, expand = conv.tucker2(c.weight, (6, 8))
    tucker = _load(Tucker2Conv2d(6, 8, (6, 8), **_args(c)),
                   {"reduce.weight": reduce, "core.weight": core, "expand.weight": expand}, c.bias.detach())
    assert torch.allclose(tucker(x), c(x), atol=1e-10)
    first, second = conv.channel_weights(*factors(spectrum(conv.channel_matrix(c.weight)), 8), c.weight.shape)
    channel = _load(LowRankConv2d(6, 8, 8, **_args(c)), {"first.weight": first, "second.weight": second},
                    c.bias.detach())
    assert torch.allclose(channel(x), c(x), atol=1e-10)


def test_spatial_svd_weight_error_equals_the_discarded_energy():
    w = _conv(k=(3, 5)).weight.detach()
    spec = spectrum(conv.spatial_matrix(w))
    vertical, horizontal = conv.spatial_weights(*factors(spec, 4), w.shape)
    rebuilt = torch.einsum("orj,rci->ocij", horizontal[:, :, 0, :], vertical[:, :, :, 0])
    assert float((w - rebuilt).pow(2).sum()) == pytest.approx(discarded_energy(spec, 4), rel=1e-9)


def test_tucker2_error_shrinks_with_rank_and_hooi_does_not_hurt():
    torch.manual_seed(1)
    w = torch.randn(32, 24, 3, 3, dtype=torch.float64)
    errors = []
    for r in (4, 8, 16, 24):
        rebuilt = conv.tucker2_reconstruct(*conv.tucker2(w, (r, r), iters=0))
        errors.append(float((w - rebuilt).norm()))
    assert errors == sorted(errors, reverse=True) and errors[-1] < errors[0]
    hosvd = float((w - conv.tucker2_reconstruct(*conv.tucker2(w, (6, 6), iters=0))).norm())
    hooi = float((w - conv.tucker2_reconstruct(*conv.tucker2(w, (6, 6), iters=3))).norm())
    assert hooi <= hosvd * (1 + 1e-9)


def test_data_aware_tucker2_lowers_the_output_error():
    torch.manual_seed(2)
    c = _conv(cin=16, cout=16, padding=1)
    scales = torch.logspace(0, -2, 16, dtype=torch.float64).reshape(1, 16, 1, 1)
    x = torch.randn(64, 16, 8, 8, dtype=torch.float64) * scales  # channels of very different sizes
    rows = x.movedim(1, -1).reshape(-1, 16)
    white = whitening(rows.T @ rows / rows.shape[0])
    errs = {}
    for name, wh in (("plain", None), ("aware", white)):
        rebuilt = conv.tucker2_reconstruct(*conv.tucker2(c.weight.detach(), (4, 16), white=wh))
        errs[name] = float((nn.functional.conv2d(x, rebuilt, padding=1) - nn.functional.conv2d(x, c.weight.detach(),
                                                                                                padding=1)).norm())
    assert errs["aware"] < 0.5 * errs["plain"]
