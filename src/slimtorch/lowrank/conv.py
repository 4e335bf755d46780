"""Convolution decompositions as pure functions on weight tensors ``W`` of shape (out, in, kh, kw).

- Channel SVD: ``W`` as an (out) x (in*kh*kw) matrix -> a k x k conv to ``r`` channels, then a 1x1 conv.
- Spatial SVD (Jaderberg, Vedaldi and Zisserman, 2014, scheme 2): ``W[o,c,i,j] ~ sum_r H[o,r,j] V[r,c,i]``
  -> a kh x 1 conv to ``r`` channels, then a 1 x kw conv.
- Tucker-2 (Kim et al., 2016): ``W ~ core x_out U_out x_in U_in`` -> a 1x1 reduce conv (in -> r_in), a
  k x k core conv (r_in -> r_out) and a 1x1 expand conv (r_out -> out). Factors come from the SVDs of the
  mode unfoldings (HOSVD), refined by a few alternating (HOOI) sweeps.

CP decomposition is not offered: it needs an iterative ALS solver (e.g. tensorly, an extra dependency)
that is often unstable at useful ranks, and a rank-R CP layer (four thin convolutions, one depthwise)
runs no faster than Tucker-2 on CPU kernels for the same parameter count.
"""

from __future__ import annotations

import torch

from slimtorch.lowrank.svd import Whitening


def channel_matrix(weight: torch.Tensor) -> torch.Tensor:
    """``W`` (out, in, kh, kw) as the (out, in*kh*kw) matrix that acts on unfolded input patches."""
    return weight.reshape(weight.shape[0], -1)


def channel_weights(a: torch.Tensor, b: torch.Tensor, shape: torch.Size) -> tuple[torch.Tensor, torch.Tensor]:
    """Conv weights from channel-SVD factors ``A`` (out x r), ``B`` (r x in*kh*kw).

    Returns:
        ``first`` (r, in, kh, kw) for the k x k conv and ``second`` (out, r, 1, 1) for the 1x1 conv.
    """
    out, cin, kh, kw = shape
    r = a.shape[1]
    return b.reshape(r, cin, kh, kw), a.reshape(out, r, 1, 1)


def spatial_matrix(weight: torch.Tensor) -> torch.Tensor:
    """``M[(o, j), (c, i)] = W[o, c, i, j]``: rows pair an output channel with a column tap, columns pair an
    input channel with a row tap. Shape (out*kw, in*kh)."""
    out, cin, kh, kw = weight.shape
    return weight.permute(0, 3, 1, 2).reshape(out * kw, cin * kh)  # (out, kw, in, kh) -> matrix


def spatial_weights(a: torch.Tensor, b: torch.Tensor, shape: torch.Size) -> tuple[torch.Tensor, torch.Tensor]:
    """Conv weights from spatial-SVD factors ``A`` (out*kw x r), ``B`` (r x in*kh).

    Returns:
        ``vertical`` (r, in, kh, 1) and ``horizontal`` (out, r, 1, kw).
    """
    out, cin, kh, kw = shape
    r = a.shape[1]
    vertical = b.reshape(r, cin, kh, 1)
    horizontal = a.reshape(out, kw, r).permute(0, 2, 1).reshape(out, r, 1, kw)  # (out, kw, r) -> (out, r, 1, kw)
    return vertical, horizontal


def _unfold(t: torch.Tensor, mode: int) -> torch.Tensor:
    """Mode-``mode`` unfolding of a 4-D tensor: that axis first, the rest flattened."""
    return t.movedim(mode, 0).reshape(t.shape[mode], -1)


def _leading(matrix: torch.Tensor, r: int) -> torch.Tensor:
    """The ``r`` leading left singular vectors of a wide matrix, as eigenvectors of its (small) Gram matrix."""
    _, vectors = torch.linalg.eigh(matrix @ matrix.T)  # ascending eigenvalues
    return vectors.flip(1)[:, :r]


def _weighted(weight: torch.Tensor, white: Whitening | None) -> torch.Tensor:
    """``W x_in L^T``: input channels mixed by the square root of their second moments (float64)."""
    w = weight.detach().double()
    if white is None:
        return w
    return torch.einsum("ocij,cd->odij", w, white.sqrt)


def tucker2_spectra(weight: torch.Tensor, white: Whitening | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Singular values of the output-mode and input-mode unfoldings of ``W`` (of ``W x_in L^T`` when
    ``white``, a whitening of the input channels, is given); their energies pick Tucker-2 ranks."""
    w = _weighted(weight, white)
    s_out = torch.linalg.svdvals(_unfold(w, 0))
    s_in = torch.linalg.svdvals(_unfold(w, 1))
    return s_out, s_in


def tucker2(
    weight: torch.Tensor, ranks: tuple[int, int], white: Whitening | None = None, iters: int = 2
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Tucker-2 factors of a conv weight, in the weight's dtype.

    Args:
        weight: (out, in, kh, kw).
        ranks: ``(r_in, r_out)``, clipped to ``(in, out)``.
        white: a whitening of the input channels' second moments, to minimize output rather than weight
            error along the input mode (data-aware); None for plain HOSVD/HOOI.
        iters: alternating refinement sweeps after the HOSVD start (0: plain truncated HOSVD).

    Returns:
        ``reduce`` (r_in, in, 1, 1), ``core`` (r_out, r_in, kh, kw) and ``expand`` (out, r_out, 1, 1).
        With full ranks their composition equals ``W`` up to float rounding.
    """
    out, cin, kh, kw = weight.shape
    r_in, r_out = min(ranks[0], cin), min(ranks[1], out)
    w = _weighted(weight, white)
    u_out = _leading(_unfold(w, 0), r_out)  # (out, r_out)
    u_in = _leading(_unfold(w, 1), r_in)  # (in, r_in)
    for _ in range(iters):
        u_out = _leading(_unfold(torch.einsum("ocij,cb->obij", w, u_in), 0), r_out)
        u_in = _leading(_unfold(torch.einsum("ocij,oa->acij", w, u_out), 1), r_in)
    core = torch.einsum("ocij,oa,cb->abij", w, u_out, u_in)  # (r_out, r_in, kh, kw)
    p = u_in if white is None else white.inv_sqrt.T @ u_in  # (in, r_in): back to the unweighted inputs
    reduce = p.T.reshape(r_in, cin, 1, 1)
    expand = u_out.reshape(out, r_out, 1, 1)
    dtype = weight.dtype
    return reduce.to(dtype), core.to(dtype), expand.to(dtype)


def tucker2_reconstruct(reduce: torch.Tensor, core: torch.Tensor, expand: torch.Tensor) -> torch.Tensor:
    """The (out, in, kh, kw) weight that the three Tucker-2 convolutions compose to."""
    return torch.einsum("oa,abij,bc->ocij", expand[:, :, 0, 0], core, reduce[:, :, 0, 0])
