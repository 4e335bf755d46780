"""Inference on packed bits: lookup-table products for binary/ternary weights, XNOR-popcount for binary inputs.

Pure functions on tensors; the packed layers in :mod:`slimtorch.quant.binary.modules` call them.

*Real inputs, packed 1-bit weights* (:func:`lut_matmul`). For every group of 8 inputs the 256 possible signed
sums ``sum_i x_i * s_i(c)`` (one per byte value ``c``) are tabulated once per input row; a weight row is then
the sum over its bytes of ``table[g, byte_g]``: one gather per 8 weights, and the weights are never expanded
to floats. Tables cost ``256 * 8`` multiply-adds per 8 inputs and row, so this pays off for the memory-bound
case (few rows, i.e. small batches); the packed layers switch to an unpacked GEMM for many rows.

*Binary inputs and weights* (:func:`xnor_matmul`). Both sides are bit-packed; the dot product of two +-1
vectors of length ``n`` is ``n - 2 * popcount(x XOR w)``. For convolutions with zero padding a ``valid`` bit
mask marks the real (non-padded) inputs: the dot is ``n_valid - 2 * popcount((x XOR w) AND valid)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from slimtorch.quant.binary.pack import popcount8

#: cap on the floats of the lookup tables (or bytes of the XOR block) built at once, to bound memory
BLOCK_ELEMENTS = 1 << 22


def byte_table(signed: bool, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> torch.Tensor:
    """``(8, 256)`` matrix whose column ``c`` holds the 8 bits of byte ``c``, as +1/-1 (signed) or 1/0.

    ``x_group @ byte_table`` gives, for every byte value, the sum of the 8 inputs weighted by its bits.
    """
    codes = torch.arange(256, device=device)
    bits = (codes.unsqueeze(0) >> torch.arange(8, device=device).unsqueeze(1)) & 1  # (8, 256)
    return (bits * 2 - 1).to(dtype) if signed else bits.to(dtype)


def lut_index(packed: torch.Tensor) -> torch.Tensor:
    """Gather positions for :func:`lut_matmul`: ``byte + 256 * group`` for every packed byte, ``(N, G)`` int32.

    int32 halves the memory of int64 and measured faster in ``index_select`` and ``embedding_bag``.
    """
    groups = torch.arange(packed.shape[1], device=packed.device, dtype=torch.int32) * 256
    return packed.to(torch.int32) + groups


def lut_matmul(x: torch.Tensor, index: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """``x @ B^T`` where ``B`` (``N x K``) is a bit matrix given by its packed bytes, through lookup tables.

    Args:
        x: ``(R, K)`` real inputs.
        index: ``(N, G)`` from :func:`lut_index` of the packed ``(N, G)`` weight bits, ``G = ceil(K / 8)``.
        table: :func:`byte_table` (signed: bits read as +1/-1; unsigned: as 1/0), ``x``'s dtype.

    Returns:
        ``(R, N)``: ``sum_k x[r, k] * b[n, k]``. Padding bits of the last byte meet zero inputs and add 0.
    """
    rows, k = x.shape
    groups = index.shape[1]
    if rows == 0:  # an empty batch: no tables to build
        return x.new_zeros(0, index.shape[0])
    if k < groups * 8:
        x = F.pad(x, (0, groups * 8 - k))
    out = []
    step = max(1, BLOCK_ELEMENTS // (groups * 256))
    for start in range(0, rows, step):
        part = x[start:start + step]
        tables = part.reshape(part.shape[0], groups, 8) @ table  # (r, G, 256): every byte's partial sum
        flat = tables.reshape(part.shape[0], groups * 256)
        if part.shape[0] == 1:
            picked = flat[0].index_select(0, index.reshape(-1)).reshape(index.shape)  # (N, G)
            out.append(picked.sum(dim=1).unsqueeze(0))  # (1, N)
        else:
            # one bag of G table rows per output; the batch is the embedding dimension
            out.append(F.embedding_bag(index, flat.t().contiguous(), mode="sum").t())  # (r, N)
    return torch.cat(out) if len(out) > 1 else out[0]


def xnor_matmul(
    x_bits: torch.Tensor, w_bits: torch.Tensor, n: int, valid: torch.Tensor | None = None
) -> torch.Tensor:
    """Dot products of +-1 vectors from their packed signs: ``n - 2 * popcount(x XOR w)``.

    Args:
        x_bits: ``(R, G)`` uint8 packed input signs (bit 1 = +1).
        w_bits: ``(N, G)`` uint8 packed weight signs.
        n: the true length of the vectors (the padding bits of both are 0, so they never differ).
        valid: optional ``(R, G)`` uint8 packed mask of real inputs; unmarked inputs count as 0 (padding).

    Returns:
        ``(R, N)`` int32 dot products.
    """
    rows, groups = x_bits.shape
    if rows == 0:  # an empty batch
        return torch.zeros(0, w_bits.shape[0], dtype=torch.int32, device=x_bits.device)
    if valid is not None:
        n_valid = popcount8(valid).sum(dim=1, dtype=torch.int32).unsqueeze(1)  # (R, 1)
    out = []
    step = max(1, BLOCK_ELEMENTS // max(1, w_bits.shape[0] * groups))
    for start in range(0, rows, step):
        diff = x_bits[start:start + step].unsqueeze(1) ^ w_bits.unsqueeze(0)  # (r, N, G)
        if valid is not None:
            diff &= valid[start:start + step].unsqueeze(1)
        out.append(popcount8(diff).sum(dim=2, dtype=torch.int32))
    mismatches = torch.cat(out) if len(out) > 1 else out[0]
    total = n_valid if valid is not None else n
    return total - 2 * mismatches
