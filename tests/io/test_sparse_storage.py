"""Sparse tensor forms: bitmask or flat positions, whichever is smaller, and exact round trips."""

import pytest
import torch

from slimtorch.io import sparse_storage
from slimtorch.io.load import _dense_state


def _sparse(shape, density, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g) * (torch.rand(*shape, generator=g) < density)


@pytest.mark.parametrize("shape, density, form, index_dtype", [
    ((256, 256), 0.10, "bits", None),          # bitmask: 8 KB + values beats 2 B per non-zero
    ((256, 256), 0.01, "index", torch.uint16),  # 65,536 elements: 2-byte positions
    ((512, 512), 0.01, "index", torch.int32),   # larger: 4-byte positions, still under the bitmask's 32 KB
    ((512, 512), 0.05, "bits", None),
])
def test_the_smaller_form_is_chosen_and_round_trips_exactly(shape, density, form, index_dtype):
    t = _sparse(shape, density)
    assert sparse_storage.choose(t) == form
    where, values = sparse_storage.encode(t, form)
    if index_dtype is not None:
        assert where.dtype == index_dtype
    assert torch.equal(sparse_storage.decode(where, values, list(shape), form), t)


def test_dense_and_tiny_tensors_stay_dense():
    assert sparse_storage.choose(torch.randn(64, 64)) is None
    assert sparse_storage.choose(torch.zeros(4, 4)) is None  # under 64 elements
    assert sparse_storage.choose(torch.zeros(64, 64, dtype=torch.int8)) is None  # integer data is left alone


def test_positions_out_of_range_are_refused():
    with pytest.raises(ValueError, match="positions"):
        sparse_storage.decode(torch.tensor([0, 99], dtype=torch.int32), torch.ones(2), [10], "index")


def test_manifest_v1_entries_still_decode():
    t = _sparse((16, 16), 0.2)
    bits, values = sparse_storage.encode(t, "bits")
    state = _dense_state({"sparse": {"w": [16, 16]}}, {"w::bits": bits, "w::values": values})  # v1: shape only
    assert torch.equal(state["w"], t)
