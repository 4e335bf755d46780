import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from slimtorch.lowrank.rank import Option, allocate, bisect_level, energy_rank, ratio_rank, svd_break_even


@settings(max_examples=60, deadline=None)
@given(values=st.lists(st.floats(0.0, 100.0), min_size=1, max_size=30), energy=st.floats(0.01, 1.0))
def test_energy_rank_is_the_smallest_rank_keeping_the_energy(values, energy):
    s = torch.tensor(sorted(values, reverse=True), dtype=torch.float64)
    r = energy_rank(s, energy)
    total = float(s.pow(2).sum())
    assert 1 <= r <= len(values)
    if total > 0:
        assert float(s[:r].pow(2).sum()) >= energy * total * (1 - 1e-9)
        if r > 1:
            assert float(s[: r - 1].pow(2).sum()) < energy * total


def test_energy_rank_examples():
    s = torch.tensor([3.0, 1.0, 0.0])  # energies 9, 1, 0
    assert energy_rank(s, 0.9) == 1
    assert energy_rank(s, 0.95) == 2
    assert energy_rank(s, 1.0) == 2


def test_ratio_rank_and_break_even():
    assert ratio_rank(768, 0.25) == 192
    assert ratio_rank(10, 0.01) == 1
    assert ratio_rank(10, 1.0) == 10
    assert svd_break_even(3072, 768) == pytest.approx(614.4)


def test_allocate_fits_the_budget_and_prefers_the_insensitive_layer():
    dense = {"a": 100.0, "b": 100.0}
    options = {
        "a": [Option(10, 20.0, 0.50), Option(30, 50.0, 0.10)],  # sensitive
        "b": [Option(10, 20.0, 0.01), Option(30, 50.0, 0.001)],  # insensitive
    }
    picks = allocate(options, dense, budget=130.0)
    total = sum(dense[n] if p is None else p.cost for n, p in picks.items())
    assert total <= 130.0
    assert picks["b"] is not None and picks["b"].cost == 20.0
    assert picks["a"] is None or picks["a"].cost >= 50.0  # the slack goes back to the sensitive layer


def test_allocate_spends_slack_left_by_a_big_step():
    dense = {"a": 100.0}
    options = {"a": [Option(1, 10.0, 0.9), Option(2, 45.0, 0.1)]}
    assert allocate(options, dense, budget=50.0)["a"].rank == 2


def test_allocate_raises_when_the_budget_cannot_be_met():
    with pytest.raises(ValueError, match="cheapest"):
        allocate({"a": [Option(1, 60.0, 0.1)]}, {"a": 100.0}, budget=50.0)


def test_bisect_level_finds_the_largest_level_that_fits():
    level = bisect_level(lambda q: 100 * q, budget=37.0, lo=0.0, hi=1.0)
    assert level == pytest.approx(0.37, abs=1e-6)
    with pytest.raises(ValueError):
        bisect_level(lambda q: 100 + q, budget=50.0, lo=0.0, hi=1.0)
