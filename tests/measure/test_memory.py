"""Peak memory on CPU: bytes of weights and buffers, the activation peak of a forward, and the model's device."""

import os

import torch
from torch import nn

from slimtorch.measure.memory import (
    _native_stderr_silenced,
    activation_peak_bytes,
    model_device,
    peak_memory_bytes,
    state_bytes,
)


class AddThenScale(nn.Module):
    """Two new tensors of x's size alive at once: ``x + 1`` while ``* 2`` writes the output."""

    def forward(self, x):
        return (x + 1) * 2


def test_state_bytes_counts_parameters_and_buffers_once():
    assert state_bytes(nn.Linear(1000, 10)) == (1000 * 10 + 10) * 4
    # weight, bias, running mean and variance in float32, num_batches_tracked in int64
    assert state_bytes(nn.BatchNorm1d(10)) == 4 * 10 * 4 + 8
    assert state_bytes(nn.Linear(8, 8).half()) == (64 + 8) * 2
    lin = nn.Linear(100, 10)
    assert state_bytes(nn.Sequential(lin, nn.ReLU(), lin)) == (1000 + 10) * 4
    emb, head = nn.Embedding(10, 4), nn.Linear(4, 10)
    head.weight = emb.weight  # tied: one storage
    assert state_bytes(nn.Sequential(emb, head)) == (40 + 10) * 4
    assert state_bytes(nn.ReLU()) == 0


def test_activation_peak_of_known_forwards():
    x = torch.randn(64, 1000)
    assert activation_peak_bytes(nn.Identity(), x) == 0  # returns its input: nothing allocated
    assert activation_peak_bytes(nn.Linear(1000, 10), x) == 64 * 10 * 4  # the output only
    # the intermediate and the output are alive together (plus the scalar operands, a few bytes)
    peak = activation_peak_bytes(AddThenScale(), x)
    assert 2 * x.nbytes <= peak <= 2 * x.nbytes + 64


def test_activation_peak_accepts_tuple_and_dict_inputs():
    class Two(nn.Module):
        def forward(self, a, b):
            return a @ b

    a, b = torch.randn(32, 16), torch.randn(16, 8)
    assert activation_peak_bytes(Two(), (a, b)) == 32 * 8 * 4
    assert activation_peak_bytes(Two(), {"a": a, "b": b}) == 32 * 8 * 4


def test_peak_memory_is_weights_plus_activation_peak():
    model = nn.Sequential(nn.Linear(256, 512), nn.ReLU(), nn.Linear(512, 10))
    x = torch.randn(16, 256)
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    peak = peak_memory_bytes(model, x)
    assert peak == state_bytes(model) + activation_peak_bytes(model, x)
    assert peak >= weights + 16 * 512 * 4  # the hidden activation at least
    assert peak_memory_bytes(nn.Linear(1000, 10), torch.randn(64, 1000)) == (10_010 + 64 * 10) * 4


def test_the_profiler_prints_nothing_and_stderr_comes_back(capfd):
    activation_peak_bytes(nn.Linear(4, 4), torch.randn(2, 4))
    with _native_stderr_silenced():
        os.write(2, b"hidden\n")
    os.write(2, b"shown\n")
    assert capfd.readouterr().err == "shown\n"


def test_model_device_is_that_of_the_first_tensor_else_cpu():
    assert model_device(nn.ReLU()) == torch.device("cpu")
    assert model_device(nn.Linear(2, 2, device="meta")) == torch.device("meta")
    buffers_only = nn.Module()
    buffers_only.register_buffer("table", torch.zeros(3, device="meta"))
    assert model_device(buffers_only).type == "meta"
