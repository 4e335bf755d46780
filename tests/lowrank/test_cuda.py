"""Low-rank decomposition of a model that lives on CUDA (runs only where CUDA is)."""

import copy

import pytest
import torch
from torch import nn

import slimtorch as st

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(),
                         nn.Flatten(), nn.Linear(32 * 8 * 8, 128), nn.ReLU(), nn.Linear(128, 10)).eval()


@pytest.mark.parametrize("method", ["tucker", "spatial_svd", "svd"])
def test_cuda_model_stays_on_cuda_and_matches_the_cpu_decomposition(method):
    cpu = _net()
    gpu = copy.deepcopy(cpu).cuda()
    batches = [torch.randn(16, 3, 8, 8) for _ in range(2)]
    config = st.LowRank(rank_ratio=0.25, method=method, data_aware=True, calibration_batches=2)
    st.decompose(cpu, config, data=batches)
    st.decompose(gpu, config, data=[b.cuda() for b in batches])
    assert all(p.is_cuda for p in gpu.parameters())
    assert [type(m).__name__ for m in gpu] == [type(m).__name__ for m in cpu]
    x = torch.randn(4, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(gpu(x.cuda()).cpu(), cpu(x), rtol=1e-3, atol=1e-3)
