import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from slimtorch.errors import ArtifactError
from slimtorch.quant.binary.pack import (
    pack_bits,
    pack_signs,
    pack_ternary,
    packed_length,
    popcount8,
    unpack_bits,
    unpack_signs,
    unpack_ternary,
)


@settings(max_examples=60, deadline=None)
@given(rows=st.integers(0, 5), n=st.integers(0, 70), seed=st.integers(0, 10_000))
def test_bits_round_trip_for_every_length(rows, n, seed):
    bits = torch.rand(rows, n, generator=torch.Generator().manual_seed(seed)) < 0.5
    packed = pack_bits(bits)
    assert packed.dtype == torch.uint8 and packed.shape == (rows, (n + 7) // 8)
    assert torch.equal(unpack_bits(packed, n), bits)


@pytest.mark.parametrize("n", range(0, 33))
def test_signs_and_ternary_round_trip_for_lengths_0_to_32(n):
    gen = torch.Generator().manual_seed(n)
    w = torch.randn(3, n, generator=gen)
    assert torch.equal(unpack_signs(pack_signs(w), n), torch.where(w >= 0, 1.0, -1.0))
    codes = torch.randint(-1, 2, (3, n), generator=gen)
    nonzero, negative = pack_ternary(codes)
    assert nonzero.shape == negative.shape == (3, packed_length(n))
    assert torch.equal(unpack_ternary(nonzero, negative, n), codes.float())


def test_bit_order_is_least_significant_first_and_padding_is_zero():
    bits = torch.tensor([[1, 0, 0, 0, 0, 0, 0, 0, 1, 1, 0]], dtype=torch.bool)
    assert pack_bits(bits).tolist() == [[1, 3]]  # the 5 padding bits of the second byte stay 0
    assert pack_signs(torch.tensor([0.0, -0.0, -1e-9])).tolist() == [3]  # sign(0) is +1


@settings(max_examples=30, deadline=None)
@given(values=st.lists(st.integers(0, 255), min_size=1, max_size=64))
def test_popcount_counts_set_bits(values):
    x = torch.tensor(values, dtype=torch.uint8)
    assert popcount8(x).tolist() == [bin(v).count("1") for v in values]


def test_unpack_rejects_short_or_wrongly_typed_rows():
    with pytest.raises(ArtifactError, match="cannot hold 17 bits"):
        unpack_bits(torch.zeros(2, 2, dtype=torch.uint8), 17)
    with pytest.raises(ArtifactError, match="uint8"):
        unpack_bits(torch.zeros(2, 2, dtype=torch.int32), 8)
