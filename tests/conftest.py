"""Shared fixtures: a private zoo cache per test session, so tests never depend on the user's cache."""

import os
import sys
from pathlib import Path

import pytest
import torch

# the architecture-pattern models are shared by tests/scenarios and tests/graph
sys.path.insert(0, str(Path(__file__).parent / "scenarios"))
# third-party model definitions for the conformance matrix; torchvision needs its import guard first
sys.path.insert(0, str(Path(__file__).parent / "conformance"))
import torchvision_guard  # noqa: E402

torchvision_guard.install()


def pytest_configure(config):
    os.environ.setdefault("SLIMTORCH_CACHE", str(config.rootpath / ".pytest_cache" / "slimtorch-zoo"))
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def digits_cnn():
    """The trained zoo CNN and its data (trained once per cache)."""
    from slimtorch import zoo

    return zoo.load("digits-cnn")


@pytest.fixture(scope="session")
def digits_mlp():
    """The trained zoo MLP and its data (trained once per cache)."""
    from slimtorch import zoo

    return zoo.load("digits-mlp")


@pytest.fixture
def xor_task():
    """256 labelled rows of 10 features in batches of 32; the label says whether x0 > x2 (pruning schedules)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 10, generator=g)
    y = (x[:, 0] - x[:, 2] > 0).long()
    return [(x[i:i + 32], y[i:i + 32]) for i in range(0, 256, 32)]


@pytest.fixture
def small_mlp():
    """A factory of the same seeded MLP 10-64-64-2 (``small_mlp()`` -> a fresh model)."""

    def make():
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Linear(10, 64), torch.nn.ReLU(), torch.nn.Linear(64, 64),
                                   torch.nn.ReLU(), torch.nn.Linear(64, 2))

    return make
