"""Per-layer facts for reports: parameters, sparsity, rank and bits of every weight-bearing layer."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from slimtorch.measure.size import count_params


def _is_layer(module: nn.Module) -> bool:
    if callable(getattr(module, "weight_counts", None)):
        return True
    weight = getattr(module, "weight", None)
    return isinstance(weight, torch.Tensor) and weight.dim() >= 2 and not any(True for _ in module.children())


#: the row name of a model that is itself one layer
ROOT = "(model)"


def layer_table(model: nn.Module) -> list[dict[str, Any]]:
    """One row per weight-bearing layer (outermost compressed module or leaf with a >=2-D weight).

    Each row has ``name``, ``type``, ``params``, ``nonzero``, ``sparsity`` (fraction 0-1), ``bits``
    (storage bits per weight: the module's ``bits`` attribute, else the weight dtype's size) and ``rank``
    (a low-rank module's ``rank`` attribute, else None). A model that is itself one layer (a bare ``nn.Linear``,
    a quantized layer) is one row named :data:`ROOT`.
    """
    rows = []
    skip_prefixes: list[str] = []
    for name, module in model.named_modules():
        if any(name.startswith(p) for p in skip_prefixes) or not _is_layer(module):
            continue
        if any(True for _ in module.children()):
            skip_prefixes.append(name + "." if name else "")  # the root: every submodule is inside its row
        name = name or ROOT
        params, nonzero = count_params(module)
        weight = getattr(module, "weight", None)
        bits = getattr(module, "bits", None)
        if bits is None and isinstance(weight, torch.Tensor):
            bits = weight.element_size() * 8
        rank = getattr(module, "rank", None)
        rows.append({
            "name": name,
            "type": type(module).__name__,
            "params": params,
            "nonzero": nonzero,
            "sparsity": 1.0 - nonzero / params if params else 0.0,
            "bits": int(bits) if isinstance(bits, int | float) else None,
            "rank": int(rank) if isinstance(rank, int) else None,
        })
    return rows
