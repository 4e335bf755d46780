"""Binary and ternary quantization math: scales, thresholds and the straight-through estimators.

Pure functions on tensors. Weights are ``(out, ...)``: every statistic is per output channel (row 0 axis).

- Binary (XNOR-Net): ``w_b = alpha * sign(w)`` with ``alpha = mean |w|`` over the channel, which minimizes
  ``||w - alpha * sign(w)||^2``.
- Ternary (Ternary Weight Networks): ``delta = 0.7 * mean |w|``; codes ``t = sign(w) * [|w| > delta]``;
  ``alpha = mean |w|`` over the entries above the threshold (0 when there are none).
- Straight-through estimator: the forward pass rounds, the backward pass lets the gradient through where the
  input is within ``[-1, 1]`` and stops it elsewhere (the clipped identity, BinaryConnect/XNOR-Net).

``sign(0)`` is taken as +1 so that every value has a 1-bit code.
"""

from __future__ import annotations

import torch

TWN_THRESHOLD = 0.7


def sign(x: torch.Tensor) -> torch.Tensor:
    """+1 where ``x >= 0`` and -1 elsewhere, in ``x``'s dtype (unlike ``torch.sign``, never 0)."""
    return torch.where(x >= 0, 1.0, -1.0).to(x.dtype)


def _rows(w: torch.Tensor) -> torch.Tensor:
    return w.reshape(w.shape[0], -1)  # (out, in * kh * kw)


def binary_scale(w: torch.Tensor) -> torch.Tensor:
    """Per-output-channel binary scale ``alpha_j = mean_i |w_ji|``.

    Args:
        w: ``(out, ...)`` float weight.

    Returns:
        ``(out,)`` scales (differentiable).
    """
    return _rows(w).abs().mean(dim=1)


def ternary_threshold(w: torch.Tensor, ratio: float = TWN_THRESHOLD) -> torch.Tensor:
    """Per-output-channel TWN threshold ``delta_j = ratio * mean_i |w_ji|`` as ``(out,)``."""
    return ratio * _rows(w).abs().mean(dim=1)


def ternary_codes(w: torch.Tensor, ratio: float = TWN_THRESHOLD) -> torch.Tensor:
    """Ternary codes in {-1, 0, +1}, same shape as ``w``: ``sign(w)`` where ``|w| > delta_j``, else 0."""
    rows = _rows(w)
    delta = ternary_threshold(w, ratio).unsqueeze(1)
    return (sign(rows) * (rows.abs() > delta)).reshape(w.shape)


def ternary_scale(w: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """Per-output-channel ternary scale: the mean ``|w|`` over entries with a non-zero code (0 for none).

    Args:
        w: ``(out, ...)`` float weight.
        codes: its codes from :func:`ternary_codes`.

    Returns:
        ``(out,)`` scales.
    """
    mask = _rows(codes).ne(0).to(w.dtype)
    count = mask.sum(dim=1)
    return (_rows(w).abs() * mask).sum(dim=1) / count.clamp(min=1)


class _SignSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return sign(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        return grad * (x.abs() <= 1).to(grad.dtype)


class _TernarySTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, w: torch.Tensor, ratio: float) -> torch.Tensor:
        ctx.save_for_backward(w)
        return ternary_codes(w, ratio)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (w,) = ctx.saved_tensors
        return grad * (w.abs() <= 1).to(grad.dtype), None


def sign_ste(x: torch.Tensor) -> torch.Tensor:
    """:func:`sign` in the forward pass; gradient ``grad * [|x| <= 1]`` (the clipped identity) backward."""
    return _SignSTE.apply(x)


def ternary_ste(w: torch.Tensor, ratio: float = TWN_THRESHOLD) -> torch.Tensor:
    """:func:`ternary_codes` forward; the clipped identity ``grad * [|w| <= 1]`` backward."""
    return _TernarySTE.apply(w, ratio)


def fake_binary_weight(w: torch.Tensor) -> torch.Tensor:
    """``alpha * sign(w)`` per output channel, differentiable through the STE and the scale (for training)."""
    shape = (-1,) + (1,) * (w.dim() - 1)
    return binary_scale(w).reshape(shape) * sign_ste(w)


def fake_ternary_weight(w: torch.Tensor, ratio: float = TWN_THRESHOLD) -> torch.Tensor:
    """``alpha * codes`` per output channel with the TWN threshold, differentiable through the STE."""
    shape = (-1,) + (1,) * (w.dim() - 1)
    codes = ternary_ste(w, ratio)
    return ternary_scale(w, codes.detach()).reshape(shape) * codes


def binarize_input(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Binary activations ``sign(x - shift)`` with the clipped STE; ``shift`` is per feature (``x``'s dim 1).

    Args:
        x: ``(batch, features)`` or ``(batch, channels, ...)`` input.
        shift: ``(features,)`` learnable threshold (0 gives XNOR-Net's plain sign).

    Returns:
        +1 / -1 tensor shaped like ``x``.
    """
    shape = (1, -1) + (1,) * (x.dim() - 2)
    return sign_ste(x - shift.reshape(shape))
