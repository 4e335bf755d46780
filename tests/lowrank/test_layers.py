import pytest
import torch
from torch import nn

from slimtorch.lowrank.calibrate import record
from slimtorch.lowrank.layers import Layer
from slimtorch.measure.flops import count_flops


@pytest.mark.parametrize("module, method, rank", [
    (nn.Linear(96, 40), "svd", 12),
    (nn.Conv2d(8, 16, 3, padding=1), "svd", 5),
    (nn.Conv2d(8, 16, 3, stride=2, padding=1), "tucker", (4, 6)),
    (nn.Conv2d(8, 16, (3, 5), stride=(2, 1), padding=(1, 2)), "spatial_svd", 7),
])
def test_costs_are_the_built_modules_real_weights_and_flops(module, method, rank):
    layer = Layer("m", module, method)
    x = torch.randn(2, 96) if isinstance(module, nn.Linear) else torch.randn(2, 8, 10, 12)
    record(module, [layer], [x], moments=False)
    built = layer.build(rank)
    weights = sum(p.numel() for n, p in built.named_parameters() if n.endswith("weight"))
    assert layer.cost(rank, "params") == weights
    assert layer.dense_cost("params") == module.weight.numel()
    assert layer.cost(rank, "flops") == count_flops(built, x)
    assert layer.dense_cost("flops") == count_flops(module, x)


def test_ranks_from_ratio_energy_and_clip():
    layer = Layer("c", nn.Conv2d(8, 16, 3), "tucker")
    assert layer.full_rank() == (8, 16)
    assert layer.rank_at_ratio(0.25) == (2, 4)
    assert layer.clip(12) == (8, 12)
    r_in, r_out = layer.rank_at_energy(1.0)
    assert r_in <= 8 and r_out <= 16
    lin = Layer("l", nn.Linear(30, 20), "svd")
    assert lin.full_rank() == 20 and lin.rank_at_ratio(0.5) == 10
    assert lin.pays_off(11) and not lin.pays_off(12)  # break-even 600 / 50 = 12
