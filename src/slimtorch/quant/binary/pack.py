"""Bit packing for binary and ternary weights: pure functions on tensors.

A binary row of ``n`` signs is stored as ``ceil(n / 8)`` bytes, 8 signs per byte; a ternary row as two such
bit-planes (``nonzero`` and ``negative``), i.e. 2 bits per weight, 4 per byte. Bit ``i`` of byte ``g`` holds
element ``8 * g + i`` (least significant bit first); the unused high bits of the last byte are always zero,
so packed rows can be XOR-ed and popcounted without masking the tail.

Pseudocode of :func:`pack_bits` for one row::

    for g in range(ceil(n / 8)):
        byte[g] = sum(bits[8 * g + i] << i for i in range(8) if 8 * g + i < n)
"""

from __future__ import annotations

import torch

from slimtorch.errors import ArtifactError

_SHIFTS = torch.arange(8, dtype=torch.uint8)


def packed_length(n: int) -> int:
    """Bytes that hold ``n`` bits: ``ceil(n / 8)``."""
    return (int(n) + 7) // 8


def pack_bits(bits: torch.Tensor) -> torch.Tensor:
    """Pack a boolean (or 0/1) tensor along its last dimension, 8 bits per byte.

    Args:
        bits: ``(..., n)`` tensor of booleans or 0/1 integers; any ``n >= 0``.

    Returns:
        ``(..., ceil(n / 8))`` uint8 tensor; bit ``i`` of byte ``g`` is element ``8 g + i``, padding bits are 0.
    """
    n = bits.shape[-1]
    pad = packed_length(n) * 8 - n
    b = bits.to(torch.uint8)
    if pad:
        b = torch.nn.functional.pad(b, (0, pad))
    b = b.reshape(*bits.shape[:-1], packed_length(n), 8)  # (..., bytes, 8)
    return (b << _SHIFTS.to(b.device)).sum(-1, dtype=torch.uint8)


def unpack_bits(packed: torch.Tensor, n: int) -> torch.Tensor:
    """Inverse of :func:`pack_bits`: the first ``n`` bits of each packed row, as booleans.

    Args:
        packed: ``(..., bytes)`` uint8 tensor.
        n: number of bits per row, ``<= 8 * bytes``.

    Returns:
        ``(..., n)`` bool tensor.

    Raises:
        ArtifactError: the tensor is not uint8 or holds fewer than ``n`` bits per row.
    """
    if packed.dtype != torch.uint8:
        raise ArtifactError(f"packed bits must be uint8, got {packed.dtype}")
    if packed.shape[-1] * 8 < n or n < 0:
        raise ArtifactError(f"packed rows of {packed.shape[-1]} bytes cannot hold {n} bits")
    bits = (packed.unsqueeze(-1) >> _SHIFTS.to(packed.device)) & 1  # (..., bytes, 8)
    return bits.reshape(*packed.shape[:-1], packed.shape[-1] * 8)[..., :n].bool()


def pack_signs(signs: torch.Tensor) -> torch.Tensor:
    """Pack signs along the last dimension: bit 1 for ``>= 0`` (+1), bit 0 for negative (-1)."""
    return pack_bits(signs >= 0)


def unpack_signs(packed: torch.Tensor, n: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Inverse of :func:`pack_signs`: ``(..., n)`` tensor of +1 / -1 in ``dtype``."""
    return unpack_bits(packed, n).to(dtype) * 2 - 1


def pack_ternary(codes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Pack ternary codes in {-1, 0, +1} along the last dimension as two bit-planes (2 bits per code).

    Returns:
        ``(nonzero, negative)``, each ``(..., ceil(n / 8))`` uint8; ``negative`` is set only where ``nonzero`` is.
    """
    return pack_bits(codes != 0), pack_bits(codes < 0)


def unpack_ternary(
    nonzero: torch.Tensor, negative: torch.Tensor, n: int, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Inverse of :func:`pack_ternary`: ``(..., n)`` codes in {-1, 0, +1} as ``dtype``."""
    nz = unpack_bits(nonzero, n).to(dtype)
    return nz * (1 - 2 * unpack_bits(negative, n).to(dtype))


def popcount8(x: torch.Tensor) -> torch.Tensor:
    """Number of set bits of every byte of a uint8 tensor (SWAR bit tricks; stays uint8, values 0-8)."""
    x = x - ((x >> 1) & 0x55)
    x = (x & 0x33) + ((x >> 2) & 0x33)
    return (x + (x >> 4)) & 0x0F
