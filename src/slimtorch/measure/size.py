"""Size of a model: parameter counts and the bytes of the real saved artifact."""

from __future__ import annotations

import os
import tempfile

import torch
from torch import nn


def count_params(model: nn.Module) -> tuple[int, int]:
    """Return ``(params, nonzero_params)``: the number of weights and of non-zero weights in ``model``.

    Plain modules count their parameters. A compressed module that stores weights in buffers (integer
    data, packed bits) defines ``weight_counts() -> (params, nonzero)`` for its own tensors, so a packed
    int4 weight counts as its logical number of weights. Tensors shared by several modules count once.
    """
    seen: set[int] = set()
    total = nonzero = 0
    for module in model.modules():
        if callable(getattr(module, "weight_counts", None)):
            own_total, own_nonzero = module.weight_counts()
            total += own_total
            nonzero += own_nonzero
            continue
        for t in module.parameters(recurse=False):
            if id(t) in seen:
                continue
            seen.add(id(t))
            total += t.numel()
            nonzero += int(torch.count_nonzero(t.detach()))
    return total, nonzero


def artifact_bytes(model: nn.Module) -> int:
    """Bytes of the file ``slimtorch.save`` writes for ``model`` (saved to a temporary folder and measured)."""
    from slimtorch.io.save import save

    with tempfile.TemporaryDirectory(prefix="slimtorch-size-") as tmp:
        path = save(model, os.path.join(tmp, "model"))
        return os.path.getsize(path)
