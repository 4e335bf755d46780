"""4-bit packing: the byte layout by hand, exhaustive round trips (odd lengths too), shapes, dtypes and range errors."""

import pytest
import torch

from slimtorch.quant.packing import pack_int4, unpack_int4

RANGES = {True: range(-8, 8), False: range(0, 16)}


def test_low_nibble_first_and_a_zero_code_pads_odd_lengths():
    # unsigned codes are the values: [1, 2, 3] -> 0x21, then 3 with a zero high nibble
    assert pack_int4(torch.tensor([1, 2, 3]), signed=False).tolist() == [0x21, 0x03]
    # signed values are stored as value + 8: -8 -> 0, 7 -> 15, 0 -> 8, -1 -> 7
    assert pack_int4(torch.tensor([-8, 7, 0, -1], dtype=torch.int8)).tolist() == [0xF0, 0x78]
    assert pack_int4(torch.tensor([5], dtype=torch.int8)).tolist() == [13]  # code 13, padding code 0


@pytest.mark.parametrize("signed", [True, False])
def test_every_pair_of_values_round_trips_through_one_byte(signed):
    values = torch.tensor(list(RANGES[signed]), dtype=torch.int8)
    pairs = torch.cartesian_prod(values, values)  # [256, 2]: every (low, high)
    packed = pack_int4(pairs, signed)
    assert packed.shape == (256, 1) and packed.dtype == torch.uint8
    assert sorted(packed.flatten().tolist()) == list(range(256))  # a one-to-one map onto the bytes
    assert torch.equal(unpack_int4(packed, 2, signed), pairs)


@pytest.mark.parametrize("signed", [True, False])
@pytest.mark.parametrize("n", [1, 2, 3, 7, 16, 31])
def test_every_value_at_every_position_round_trips_for_odd_and_even_lengths(signed, n):
    values = torch.tensor(list(RANGES[signed]), dtype=torch.int8)
    # row r holds values[(r + i) % 16] at position i: each value appears at each position
    index = (torch.arange(16)[:, None] + torch.arange(n)[None, :]) % 16
    q = values[index]
    packed = pack_int4(q, signed)
    assert packed.shape == (16, (n + 1) // 2) and packed.dtype == torch.uint8
    back = unpack_int4(packed, n, signed)
    assert back.dtype == torch.int8 and torch.equal(back, q)


def test_leading_dimensions_and_input_dtypes_are_kept():
    q = torch.randint(-8, 8, (2, 3, 5), generator=torch.Generator().manual_seed(0))  # int64
    packed = pack_int4(q)
    assert packed.shape == (2, 3, 3)
    assert torch.equal(unpack_int4(packed, 5), q.to(torch.int8))
    for dtype in (torch.int8, torch.int16, torch.int32):
        assert torch.equal(pack_int4(q.to(dtype)), packed)
    u = torch.arange(16, dtype=torch.uint8).reshape(2, 8)
    assert torch.equal(unpack_int4(pack_int4(u, signed=False), 8, signed=False), u.to(torch.int8))


def test_an_empty_last_dimension_packs_to_nothing():
    packed = pack_int4(torch.zeros(3, 0, dtype=torch.int8))
    assert packed.shape == (3, 0)
    assert unpack_int4(packed, 0).shape == (3, 0)


@pytest.mark.parametrize("signed,bad", [(True, -9), (True, 8), (False, -1), (False, 16), (True, 100)])
def test_a_value_outside_four_bits_is_a_value_error(signed, bad):
    q = torch.tensor([0, 1, bad, 2], dtype=torch.int16)
    with pytest.raises(ValueError, match="4 bits"):
        pack_int4(q, signed)


def test_a_wide_integer_outside_four_bits_is_a_value_error_too():
    with pytest.raises(ValueError, match="4 bits"):
        pack_int4(torch.tensor([65536 + 3], dtype=torch.int32), signed=False)
