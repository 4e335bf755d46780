"""Peak memory of one inference: the weights plus the largest set of tensors alive at once during it."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile

from slimtorch.data import call


def state_bytes(model: nn.Module) -> int:
    """Bytes of every parameter and buffer of ``model`` in memory (shared tensors once)."""
    seen: dict[int, int] = {}
    for t in list(model.parameters()) + list(model.buffers()):
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
    return sum(seen.values())


def activation_peak_bytes(model: nn.Module, example_inputs: Any) -> int:
    """Largest number of bytes the forward pass holds in newly allocated tensors at any moment.

    Allocations and frees are read from the PyTorch profiler's memory events in time order; memory an
    operator allocates and frees inside itself (kernel scratch) is not seen.
    """
    with torch.inference_mode(), _native_stderr_silenced():
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            call(model, example_inputs)
    live = peak = 0
    for event in sorted(prof.events(), key=lambda e: e.time_range.start):
        live += event.self_cpu_memory_usage
        peak = max(peak, live)
    return peak


@contextlib.contextmanager
def _native_stderr_silenced() -> Iterator[None]:
    """Send file descriptor 2 to /dev/null for the block: the profiler's C++ side prints start/stop lines there."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter or buffer (CPU for a model without tensors)."""
    for t in list(model.parameters()) + list(model.buffers()):
        return t.device
    return torch.device("cpu")


def peak_memory_bytes(model: nn.Module, example_inputs: Any) -> int:
    """Peak bytes of one inference: weights and buffers plus the activation peak.

    On CUDA this is the allocator's ``max_memory_allocated`` during the forward (weights included).
    """
    device = model_device(model)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        with torch.inference_mode():
            call(model, example_inputs)
        torch.cuda.synchronize(device)
        return int(torch.cuda.max_memory_allocated(device))
    return state_bytes(model) + activation_peak_bytes(model, example_inputs)
