"""Binary and ternary layers on CUDA (runs only where CUDA is)."""

import copy

import pytest
import torch
from torch import nn

import slimtorch as st

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
                         nn.Flatten(), nn.Linear(16 * 6 * 6, 64), nn.ReLU(), nn.Linear(64, 10)).eval()


@pytest.mark.parametrize("config", [st.Binarize(), st.Ternarize(), st.Binarize(activations=True)],
                         ids=["binary", "ternary", "xnor"])
def test_cuda_model_stays_on_cuda_and_matches_the_cpu_result(config):
    cpu = _net()
    gpu = copy.deepcopy(cpu).cuda()
    batches = [torch.randn(8, 3, 6, 6) for _ in range(2)]
    st.quantize(cpu, config, data=batches)
    st.quantize(gpu, config, data=[b.cuda() for b in batches])
    assert all(t.is_cuda for t in gpu.state_dict().values())
    x = torch.randn(4, 3, 6, 6)
    for kernel in ("packed", "unpacked"):
        for m in (cpu, gpu):
            for layer in m.modules():
                if hasattr(layer, "kernel"):
                    layer.kernel = kernel
        with torch.no_grad():
            assert torch.allclose(gpu(x.cuda()).cpu(), cpu(x), atol=1e-3), kernel


def test_cuda_training_layers_train_and_pack():
    model = _net().cuda()
    st.quantize(model, st.QuantAwareTraining(target=st.Binarize(activations=True)),
                data=[(torch.randn(8, 3, 6, 6, device="cuda"), torch.randint(0, 10, (8,), device="cuda"))])
    assert type(model[2]).__name__ == "BinaryConv2d" and model[2].signs.is_cuda
