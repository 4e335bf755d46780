"""Truncated SVD of a weight matrix, plain or weighted by the inputs' second moments (pure functions).

A matrix ``M`` (outputs x inputs) acting on input vectors ``x`` is replaced by ``A @ B`` with ``A``
(outputs x r) and ``B`` (r x inputs). Plain SVD minimizes the weight error ``||M - AB||_F``. The data-aware
variant minimizes the output error ``E||(M - AB) x||^2 = ||(M - AB) L||_F^2``, where ``L L^T = E[x x^T]``
is the inputs' second-moment matrix: it factorizes ``M L`` and maps the input factor back with ``L^-1``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

#: eigenvalues of the second-moment matrix are floored at this fraction of their mean (rank-deficient inputs)
DAMPING = 1e-4


@dataclass(frozen=True)
class Whitening:
    """A square root of an input second-moment matrix and its inverse: ``sqrt @ sqrt.T = E[x x^T]``."""

    sqrt: torch.Tensor
    inv_sqrt: torch.Tensor


def whitening(second_moment: torch.Tensor, damping: float = DAMPING) -> Whitening:
    """Factor a symmetric second-moment matrix ``C`` (n x n) as ``L L^T`` through its eigendecomposition.

    Args:
        second_moment: ``E[x x^T]`` of the inputs, n x n.
        damping: eigenvalues below ``damping * mean(eigenvalues)`` are raised to it, so ``L`` stays invertible.

    Returns:
        ``L = Q diag(sqrt(lam))`` and ``L^-1 = diag(1/sqrt(lam)) Q^T``, in float64.
    """
    c = second_moment.double()
    c = (c + c.T) / 2
    lam, q = torch.linalg.eigh(c)
    floor = max(float(lam.clamp(min=0).mean()) * damping, 1e-12)
    root = lam.clamp(min=floor).sqrt()
    return Whitening(sqrt=q * root, inv_sqrt=(q / root).T)


@dataclass(frozen=True)
class Spectrum:
    """The SVD of a (possibly whitened) matrix, kept so that many ranks can be cut from one decomposition."""

    u: torch.Tensor  # (out, k)
    s: torch.Tensor  # (k,), descending
    vh: torch.Tensor  # (k, in), in the whitened coordinates when ``inv_sqrt`` is set
    inv_sqrt: torch.Tensor | None = None

    @property
    def full_rank(self) -> int:
        """``min(out, in)``: the rank that reproduces the matrix exactly."""
        return int(self.s.numel())


def spectrum(matrix: torch.Tensor, white: Whitening | None = None) -> Spectrum:
    """SVD of ``matrix`` (out x in), or of ``matrix @ L`` when a whitening of its inputs is given (float64)."""
    m = matrix.detach().double()
    if white is not None:
        m = m @ white.sqrt
    u, s, vh = torch.linalg.svd(m, full_matrices=False)
    return Spectrum(u=u, s=s, vh=vh, inv_sqrt=None if white is None else white.inv_sqrt)


def factors(spec: Spectrum, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Cut ``(A, B)`` of rank ``rank`` from a spectrum: ``A = U_r S_r`` (out x r), ``B = V_r^T`` (r x in).

    With a whitening, ``B = V_r^T L^-1`` so that ``A @ B`` approximates the original (unwhitened) matrix.
    Both are float64; cast them to the layer's dtype.
    """
    r = max(1, min(rank, spec.full_rank))
    a = spec.u[:, :r] * spec.s[:r]  # (out, r)
    b = spec.vh[:r]  # (r, in)
    if spec.inv_sqrt is not None:
        b = b @ spec.inv_sqrt
    return a, b


def discarded_energy(spec: Spectrum, rank: int) -> float:
    """``sum(s_i^2 for i >= rank)``: the squared error of the rank-``rank`` cut (weight error for plain SVD,
    ``||(M - AB) L||_F^2`` for the whitened one)."""
    return float(spec.s[rank:].pow(2).sum())


def truncated_svd(
    matrix: torch.Tensor, rank: int, white: Whitening | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(A, B)`` with ``A @ B`` the best rank-``rank`` approximation of ``matrix`` (in output error when
    ``white`` is given); shorthand for ``factors(spectrum(matrix, white), rank)``, in the matrix's dtype.

    Example:
        >>> w = torch.randn(6, 4)
        >>> a, b = truncated_svd(w, 4)
        >>> torch.allclose(a @ b, w, atol=1e-5)
        True
    """
    a, b = factors(spectrum(matrix, white), rank)
    return a.to(matrix.dtype), b.to(matrix.dtype)
