"""Pruning and fine-tuning a model that lives on CUDA: masks stay on the device and hold (runs only with CUDA)."""

import pytest
import torch
from torch import nn

import slimtorch as st
from slimtorch.summary import last_summary

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _setup():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.Flatten(),
                          nn.Linear(16 * 8 * 8, 64), nn.ReLU(), nn.Linear(64, 4)).cuda()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(128, 3, 8, 8, generator=g)
    y = (x[:, 0].mean((1, 2)) > 0).long() + (x[:, 1].mean((1, 2)) > 0).long()
    batches = [(x[i:i + 32].cuda(), y[i:i + 32].cuda()) for i in range(0, 128, 32)]
    return model, batches


@pytest.mark.parametrize("importance", ["l1", "taylor", "movement", "random"])
def test_unstructured_on_cuda_matches_cpu_masks(importance):
    model, batches = _setup()
    cpu_model = __import__("copy").deepcopy(model).cpu()
    cpu_batches = [(x.cpu(), y.cpu()) for x, y in batches]
    st.prune(model, st.UnstructuredPruning(sparsity=0.8, importance=importance, recalibrate_bn=False),
             data=batches, seed=2)
    st.prune(cpu_model, st.UnstructuredPruning(sparsity=0.8, importance=importance, recalibrate_bn=False),
             data=cpu_batches, seed=2)
    assert model[0].slim_mask.is_cuda
    agree = (model[4].slim_mask.cpu() == cpu_model[4].slim_mask).float().mean()
    assert agree > 0.99  # identical up to float ties between GPU and CPU gradient sums


def test_finetune_and_gradual_on_cuda_keep_masks():
    model, batches = _setup()
    teacher = __import__("copy").deepcopy(model).eval()
    st.prune(model, st.NMPruning(n=2, m=4), data=batches)
    st.finetune(model, batches, teacher=teacher, epochs=2, config=st.Finetune(feature_layers=("4",)))
    assert next(model.parameters()).is_cuda
    assert int((model[4].weight != 0).sum()) == model[4].weight.numel() // 2
    other, _ = _setup()
    st.prune(other, st.GradualPruning(sparsity=0.9, epochs=3, frequency=2, importance="movement"), data=batches)
    assert last_summary(other).details["overall"] == pytest.approx(0.9, abs=1e-3)
