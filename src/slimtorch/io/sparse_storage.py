"""Compact storage of sparse tensors: a packed bitmask of the non-zeros plus the non-zero values.

For a float32 tensor of n elements with sparsity s this takes n/8 + 4n(1-s) bytes instead of 4n, which is
smaller from s > 3% on; :func:`worth_it` decides per tensor.
"""

from __future__ import annotations

import numpy as np
import torch


def worth_it(tensor: torch.Tensor, min_saving: float = 0.1) -> bool:
    """True when bitmask + values saves at least ``min_saving`` (fraction 0-1) of the dense bytes."""
    if not tensor.is_floating_point() or tensor.numel() < 64:
        return False
    nnz = int(torch.count_nonzero(tensor))
    dense = tensor.numel() * tensor.element_size()
    packed = (tensor.numel() + 7) // 8 + nnz * tensor.element_size()
    return packed <= (1.0 - min_saving) * dense


def encode(tensor: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(bits, values)``: uint8 bitmask of ``tensor != 0`` (row-major, MSB first) and the non-zeros."""
    flat = tensor.detach().reshape(-1)
    mask = flat != 0
    bits = torch.from_numpy(np.packbits(mask.numpy()))
    return bits, flat[mask].clone()


def decode(bits: torch.Tensor, values: torch.Tensor, shape: list[int]) -> torch.Tensor:
    """Inverse of :func:`encode`: the dense tensor of ``shape`` with ``values`` where ``bits`` are set."""
    numel = int(np.prod(shape)) if shape else 1
    mask = torch.from_numpy(np.unpackbits(bits.numpy(), count=numel).astype(bool))
    if int(mask.sum()) != values.numel():
        raise ValueError(f"bitmask has {int(mask.sum())} set bits but {values.numel()} values were stored")
    out = torch.zeros(numel, dtype=values.dtype)
    out[mask] = values
    return out.reshape(shape)
