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
