import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from slimtorch.lowrank.svd import discarded_energy, factors, spectrum, truncated_svd, whitening


@settings(max_examples=40, deadline=None)
@given(out=st.integers(1, 24), inp=st.integers(1, 24), seed=st.integers(0, 10_000), frac=st.floats(0.0, 1.0))
def test_reconstruction_error_equals_discarded_energy(out, inp, seed, frac):
    w = torch.randn(out, inp, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    spec = spectrum(w)
    rank = max(1, round(frac * spec.full_rank))
    a, b = factors(spec, rank)
    err = float((w - a @ b).pow(2).sum())
    assert abs(err - discarded_energy(spec, rank)) <= 1e-9 * float(w.pow(2).sum()) + 1e-12


def test_float32_factors_keep_the_energy_identity_to_float_tolerance():
    w = torch.randn(96, 64, generator=torch.Generator().manual_seed(0))
    spec = spectrum(w)
    a, b = truncated_svd(w, 16)
    assert a.dtype == b.dtype == torch.float32 and a.shape == (96, 16) and b.shape == (16, 64)
    err = float((w.double() - (a @ b).double()).pow(2).sum())
    assert abs(err - discarded_energy(spec, 16)) / discarded_energy(spec, 16) < 1e-5


def test_full_rank_reproduces_the_matrix():
    w = torch.randn(40, 30)
    a, b = truncated_svd(w, 30)
    assert torch.allclose(a @ b, w, atol=1e-5)


def _correlated_inputs(n: int, d: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(d, d, generator=g, dtype=torch.float64) * torch.logspace(0, -3, d, dtype=torch.float64)
    return torch.randn(n, d, generator=g, dtype=torch.float64) @ mix.T


def test_data_aware_error_is_the_discarded_energy_of_the_whitened_matrix_and_beats_plain_svd():
    x = _correlated_inputs(4000, 32, seed=1)  # (N, in) inputs with a decaying spectrum
    w = torch.randn(48, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    white = whitening(x.T @ x / x.shape[0], damping=0.0)
    spec = spectrum(w, white)
    a, b = factors(spec, 8)
    weighted = float(((w - a @ b) @ white.sqrt).pow(2).sum())
    assert abs(weighted - discarded_energy(spec, 8)) < 1e-8 * float((w @ white.sqrt).pow(2).sum())
    out_err_aware = float((x @ (w - a @ b).T).pow(2).mean(0).sum())
    pa, pb = truncated_svd(w, 8)
    out_err_plain = float((x @ (w - pa @ pb).T).pow(2).mean(0).sum())
    assert out_err_aware < 0.5 * out_err_plain


def test_whitening_squares_back_to_the_second_moment_and_survives_rank_deficient_inputs():
    x = torch.randn(200, 6, dtype=torch.float64)
    c = x.T @ x / 200
    white = whitening(c, damping=0.0)
    assert torch.allclose(white.sqrt @ white.sqrt.T, c, atol=1e-10)
    assert torch.allclose(white.sqrt @ white.inv_sqrt, torch.eye(6, dtype=torch.float64), atol=1e-10)
    deficient = torch.zeros(6, 6, dtype=torch.float64)
    deficient[0, 0] = 1.0
    assert torch.isfinite(whitening(deficient).inv_sqrt).all()
