"""Quantization arithmetic: scales, zero points, rounding, granularity, packing."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as hs

from slimtorch.errors import ConfigError
from slimtorch.quant.packing import pack_int4, unpack_int4
from slimtorch.quant.qparams import choose_qparams, dequantize, minmax, qrange, quantize

SCHEMES = [(8, True), (8, False), (4, True), (4, False), (2, True), (3, False), (6, True)]


@settings(max_examples=60, deadline=None)
@given(seed=hs.integers(0, 2**16), scheme=hs.sampled_from(SCHEMES), symmetric=hs.booleans(),
       spread=hs.floats(1e-3, 1e3))
def test_error_at_most_half_a_step_inside_the_range(seed, scheme, symmetric, spread):
    bits, signed = scheme
    x = (torch.rand(257, generator=torch.Generator().manual_seed(seed)) - 0.3) * spread
    scale, zero = choose_qparams(x.min(), x.max(), bits=bits, symmetric=symmetric, signed=signed)
    back = dequantize(quantize(x, scale, zero, bits=bits, signed=signed), scale, zero)
    # 1e-6 relative slack for float32 rounding of x / scale
    assert float((back - x).abs().max()) <= float(scale) / 2 * (1 + 1e-5) + 1e-6 * spread
    qmin, qmax = qrange(bits, signed)
    assert qmin <= int(zero) <= qmax  # the zero point is an integer in range, so 0.0 is exact
    assert float(dequantize(quantize(torch.zeros(1), scale, zero, bits=bits, signed=signed), scale, zero)) == 0.0


def test_symmetric_signed_zero_point_is_zero_and_maps_bound_to_qmax():
    scale, zero = choose_qparams(torch.tensor([-2.0, -1.0]), torch.tensor([1.0, 4.0]), bits=8)
    assert zero.tolist() == [0, 0]
    assert torch.allclose(scale, torch.tensor([2.0 / 127, 4.0 / 127]))


def test_round_half_to_even_and_clamping():
    q = quantize(torch.tensor([0.5, 1.5, 2.5, -0.5, 1000.0, -1000.0]), torch.tensor(1.0), torch.tensor(0))
    assert q.tolist() == [0, 2, 2, 0, 127, -128]


def test_per_group_scales_equal_hand_computed_example():
    w = torch.tensor([[1.2, -2.0, 0.5, 0.3], [7.0, 0.0, -3.5, 1.0]])
    lo, hi = minmax(w, axis=0, group_size=2)
    scale, zero = choose_qparams(lo, hi, bits=4, symmetric=True)
    # max |w| per group of 2 / qmax (7): [[2, 0.5], [7, 3.5]] / 7; 1.2 * 7 / 2 = 4.2 -> 4, 0.3 * 14 = 4.2 -> 4
    assert torch.allclose(scale, torch.tensor([[2 / 7, 0.5 / 7], [1.0, 0.5]]))
    q = quantize(w, scale, zero, bits=4, axis=0, group_size=2)
    assert q.tolist() == [[4, -7, 7, 4], [7, 0, -7, 2]]


def test_per_channel_any_axis():
    x = torch.randn(3, 5, 4)
    lo, hi = minmax(x, axis=1)
    scale, zero = choose_qparams(lo, hi, bits=8, symmetric=False, signed=False)
    assert scale.shape == (5,)
    back = dequantize(quantize(x, scale, zero, signed=False, axis=1), scale, zero, axis=1)
    assert torch.all((back - x).abs() <= scale.reshape(1, -1, 1) / 2 + 1e-6)


@pytest.mark.parametrize("bits", [0, 9, -1])
def test_bad_bits_is_config_error(bits):
    with pytest.raises(ConfigError, match="bits"):
        qrange(bits, True)


def test_a_short_last_group_has_the_range_of_its_own_columns():
    w = torch.tensor([[1.0, -2.0, 3.0, 0.5, -0.25], [4.0, 0.0, -1.0, -8.0, 2.0]])  # width 5, groups of 2: 2 + 2 + 1
    lo, hi = minmax(w, axis=0, group_size=2)
    assert lo.tolist() == [[-2.0, 0.5, -0.25], [0.0, -8.0, 2.0]]
    assert hi.tolist() == [[1.0, 3.0, -0.25], [4.0, -1.0, 2.0]]
    scale, zero = choose_qparams(lo, hi, bits=4)
    q = quantize(w, scale, zero, bits=4, axis=0, group_size=2)
    assert q.shape == w.shape and q[:, 4].tolist() == [-7, 7]  # the one-column group: its own value at full scale
    back = dequantize(q, scale, zero, axis=0, group_size=2)
    assert back.shape == w.shape and torch.allclose(back[:, 4], w[:, 4])


def test_group_size_on_a_non_matrix_is_config_error():
    with pytest.raises(ConfigError, match="group_size=4 applies to a 2-D weight"):
        minmax(torch.randn(4, 8, 2), axis=0, group_size=4)


@given(n=hs.integers(1, 41), rows=hs.integers(1, 3), signed=hs.booleans(), seed=hs.integers(0, 999))
def test_int4_packing_round_trips_odd_lengths(n, rows, signed, seed):
    lo, hi = (-8, 8) if signed else (0, 16)
    q = torch.randint(lo, hi, (rows, n), generator=torch.Generator().manual_seed(seed), dtype=torch.int8)
    packed = pack_int4(q, signed)
    assert packed.dtype == torch.uint8 and packed.shape == (rows, (n + 1) // 2)
    assert torch.equal(unpack_int4(packed, n, signed), q)
