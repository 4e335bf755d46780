"""GPU path of measure(): synchronized timing and the CUDA allocator's peak (runs only where CUDA is)."""

import pytest
import torch
from torch import nn

import slimtorch as st

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def test_measure_on_cuda_synchronizes_and_reads_the_allocator_peak():
    model = nn.Sequential(nn.Linear(1024, 4096), nn.ReLU(), nn.Linear(4096, 1024)).cuda().eval()
    x = torch.randn(256, 1024, device="cuda")
    m = st.measure(model, x, repeats=10)
    weights = sum(p.numel() * 4 for p in model.parameters())
    assert m.peak_memory_bytes >= weights + 256 * 4096 * 4
    assert m.macs == 256 * (1024 * 4096 + 4096 * 1024)
    assert m.latency_ms > 0 and m.size_bytes > weights
