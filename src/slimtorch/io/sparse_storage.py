"""Compact storage of sparse tensors: the non-zero values plus where they are, in the smaller of two forms.

- ``"bits"``: a packed bitmask of the non-zeros, n/8 bytes for n elements whatever the sparsity;
- ``"index"``: the flat positions of the non-zeros, 2 bytes each (uint16, tensors up to 65,536 elements) or
  4 bytes (int32), so smaller than the bitmask above about 94% (uint16) or 97% (int32) sparsity.

For a float32 tensor with sparsity s the bitmask form takes n/8 + 4n(1-s) bytes instead of 4n, smaller from
s > 3% on; :func:`choose` picks the form per tensor, or none where neither saves enough.
"""

from __future__ import annotations

import math

import numpy as np
import torch

FORMS = ("bits", "index")


def _index_dtype(numel: int) -> torch.dtype:
    return torch.uint16 if numel <= 1 << 16 else torch.int32


def choose(tensor: torch.Tensor, min_saving: float = 0.1) -> str | None:
    """The smaller sparse form of ``tensor`` ("bits" or "index"), or None when neither saves at least
    ``min_saving`` (fraction 0-1) of the dense bytes."""
    if not tensor.is_floating_point() or tensor.numel() < 64:
        return None
    n, nnz, item = tensor.numel(), int(torch.count_nonzero(tensor)), tensor.element_size()
    sizes = {"bits": (n + 7) // 8 + nnz * item, "index": nnz * (_index_dtype(n).itemsize + item)}
    form = min(sizes, key=sizes.get)
    return form if sizes[form] <= (1.0 - min_saving) * n * item else None


def encode(tensor: torch.Tensor, form: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(where, values)``: the bitmask (uint8, row-major, MSB first) or the flat positions of the
    non-zeros, and the non-zero values in row-major order."""
    flat = tensor.detach().reshape(-1)
    mask = flat != 0
    if form == "bits":
        where = torch.from_numpy(np.packbits(mask.numpy()))
    else:
        where = torch.nonzero(mask).reshape(-1).to(_index_dtype(flat.numel()))
    return where, flat[mask].clone()


def decode(where: torch.Tensor, values: torch.Tensor, shape: list[int], form: str) -> torch.Tensor:
    """Inverse of :func:`encode`: the dense tensor of ``shape`` with ``values`` at the stored positions.

    Raises:
        ValueError: the positions and values disagree, or either has a dtype or size ``encode`` never writes
            (a corrupted file).
    """
    numel = math.prod(shape)
    if values.dim() != 1 or not values.is_floating_point():
        raise ValueError(f"the values are {values.dtype} of shape {list(values.shape)}, not a 1-D float tensor")
    out = torch.zeros(numel, dtype=values.dtype)
    if form == "bits":
        if where.dtype != torch.uint8 or where.dim() != 1 or where.numel() != (numel + 7) // 8:
            raise ValueError(f"the bitmask is {where.dtype} of shape {list(where.shape)}, not the "
                             f"{(numel + 7) // 8} bytes of {numel} elements")
        mask = torch.from_numpy(np.unpackbits(where.numpy(), count=numel).astype(bool))
        if int(mask.sum()) != values.numel():
            raise ValueError(f"bitmask has {int(mask.sum())} set bits but {values.numel()} values were stored")
        out[mask] = values
    else:
        if where.dtype not in (torch.uint16, torch.int32) or where.dim() != 1:
            raise ValueError(f"the positions are {where.dtype} of shape {list(where.shape)}, not 1-D uint16/int32")
        index = where.to(torch.int64)
        if index.numel() != values.numel() or (index.numel() and (index.min() < 0 or index.max() >= numel)):
            raise ValueError(f"{index.numel()} positions for {values.numel()} values in a tensor of {numel}")
        if index.numel() > 1 and not bool((index[1:] > index[:-1]).all()):
            raise ValueError("the positions are not strictly increasing")
        out[index] = values
    return out.reshape(shape)
