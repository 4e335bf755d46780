"""Pruning schedules' math: the cubic and geometric ramps (pure) and the gradual pruner driven from the loop; their
handlers are tested in tests/train/test_prune_schedules.py."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as hs

import slimtorch as st
from slimtorch.prune.masks import attach_mask
from slimtorch.prune.schedule import GradualPruner, cubic_sparsity, iterative_sparsities


def test_cubic_schedule_values():
    kw = {"initial": 0.0, "final": 0.8, "begin": 0, "end": 100}
    assert cubic_sparsity(0, **kw) == 0.0 and cubic_sparsity(100, **kw) == 0.8 and cubic_sparsity(500, **kw) == 0.8
    assert cubic_sparsity(50, **kw) == pytest.approx(0.8 * (1 - 0.5**3))
    # fast early, slow late: half the steps reach 87.5% of the ramp
    assert cubic_sparsity(50, **kw) > 0.8 * 0.85


@settings(max_examples=50, deadline=None)
@given(hs.floats(0, 0.5), hs.floats(0.5, 0.99), hs.integers(0, 20), hs.integers(1, 200))
def test_cubic_schedule_is_monotone_and_bounded(initial, final, begin, length):
    values = [cubic_sparsity(t, initial=initial, final=final, begin=begin, end=begin + length)
              for t in range(begin + length + 3)]
    assert all(b >= a - 1e-12 for a, b in zip(values, values[1:], strict=False))
    assert values[0] == initial and values[-1] == pytest.approx(final)


def test_iterative_ramp_removes_a_constant_fraction():
    s = iterative_sparsities(0.9, 3)
    assert s[-1] == pytest.approx(0.9)
    remaining = [1.0] + [1 - v for v in s]
    ratios = [b / a for a, b in zip(remaining, remaining[1:], strict=False)]
    assert ratios == pytest.approx([0.1 ** (1 / 3)] * 3)


def test_gradual_pruner_follows_the_schedule_from_the_loop(small_mlp, xor_task):
    model = small_mlp()
    layers = [("0", model[0]), ("2", model[2])]
    for _, m in layers:
        attach_mask(m, torch.ones_like(m.weight, dtype=torch.bool))
    cfg = st.GradualPruning(sparsity=0.8, epochs=4, frequency=2, end_fraction=0.5)
    pruner = GradualPruner(layers, cfg, total_steps=32, seed=0)
    seen = []

    def on_step(m):
        pruner(m)
        zeros = sum(int((mod.weight == 0).sum()) for _, mod in layers)
        seen.append(zeros / sum(mod.weight.numel() for _, mod in layers))

    st.finetune(model, xor_task, config=st.Finetune(epochs=4, lr=1e-2), on_step=on_step)
    assert len(seen) == 32 and pruner.finished
    assert all(b >= a for a, b in zip(seen, seen[1:], strict=False))  # pruned weights never come back
    for t in (2, 8, 16):  # after each pruning step the sparsity is the schedule's
        assert seen[t - 1] == pytest.approx(cubic_sparsity(t, initial=0, final=0.8, begin=0, end=16), abs=1e-3)
    assert seen[-1] == pytest.approx(0.8, abs=1e-3)


def test_schedule_errors():
    with pytest.raises(st.ConfigError, match="initial_sparsity"):
        st.GradualPruning(sparsity=0.5, initial_sparsity=0.7)
    with pytest.raises(st.ConfigError, match="sparsity"):
        st.IterativePruning(sparsity=1.5)
    with pytest.raises(st.ConfigError, match="rounds"):
        st.IterativePruning(rounds=0)
    assert st.GradualPruning().requires_data()
