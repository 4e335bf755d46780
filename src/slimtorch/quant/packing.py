"""Packing two 4-bit integers per byte (low nibble first), for any length along the last dimension.

Pseudocode for one row ``v`` of 4-bit codes ``c = v + 8`` (signed) or ``v`` (unsigned), padded with a zero
code to an even length: ``byte[i] = c[2i] | (c[2i + 1] << 4)``.
"""

from __future__ import annotations

import torch


def pack_int4(q: torch.Tensor, signed: bool = True) -> torch.Tensor:
    """Pack 4-bit values along the last dimension: ``[..., n]`` -> uint8 ``[..., ceil(n / 2)]``.

    Args:
        q: integers in [-8, 7] (signed) or [0, 15] (unsigned).
        signed: how to read ``q``.

    Raises:
        ValueError: a value outside the 4-bit range.
    """
    lo, hi = (-8, 7) if signed else (0, 15)
    if q.numel() and (int(q.min()) < lo or int(q.max()) > hi):  # before any cast: a wide value must not wrap
        raise ValueError(f"values must fit in 4 bits ({'-8..7' if signed else '0..15'}) to be packed")
    codes = q.to(torch.int16) + (8 if signed else 0)
    if codes.shape[-1] % 2:
        codes = torch.nn.functional.pad(codes, (0, 1))
    low, high = codes[..., 0::2], codes[..., 1::2]
    return (low | (high << 4)).to(torch.uint8)


def unpack_int4(packed: torch.Tensor, n: int, signed: bool = True) -> torch.Tensor:
    """Inverse of :func:`pack_int4`: uint8 ``[..., ceil(n / 2)]`` -> int8 ``[..., n]``."""
    p = packed.to(torch.int16)
    codes = torch.stack([p & 0x0F, (p >> 4) & 0x0F], dim=-1).reshape(*packed.shape[:-1], -1)[..., :n]
    return (codes - (8 if signed else 0)).to(torch.int8)
