"""Importance criteria: pure scores on tensors and the calibration gradient pass."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as hs
from torch import nn

from slimtorch.errors import DataError
from slimtorch.prune.importance import (
    accumulate_gradients,
    l1,
    l2,
    movement,
    movement_step,
    random_scores,
    score,
    taylor,
)


@settings(max_examples=30, deadline=None)
@given(hs.lists(hs.floats(-100, 100, width=32).filter(lambda v: v == 0 or abs(v) > 1e-12), min_size=1, max_size=50))
def test_l1_and_l2_rank_weights_alike(values):
    w = torch.tensor(values)
    assert torch.equal(l1(w), w.abs())
    assert torch.allclose(l2(w), w * w)
    # the same order: l2 is a monotone function of l1
    assert torch.equal(torch.argsort(l1(w), stable=True), torch.argsort(l2(w), stable=True))


def test_random_scores_are_seeded():
    w = torch.zeros(7, 5)
    assert torch.equal(random_scores(w, 3), random_scores(w, 3))
    assert not torch.equal(random_scores(w, 3), random_scores(w, 4))
    assert random_scores(w, 0).shape == w.shape


def test_taylor_and_movement_formulas():
    w = torch.tensor([1.0, -2.0, 3.0])
    g = torch.tensor([0.5, 0.5, -1.0])
    assert torch.allclose(taylor(w, g), torch.tensor([0.5, 1.0, 3.0]))
    step = movement_step(w, g)  # -w*g: weight 3 with grad -1 moves away from zero (score +3)
    assert torch.allclose(step, torch.tensor([-0.5, 1.0, 3.0]))
    assert torch.equal(movement(w, step), step)
    with pytest.raises(ValueError, match="shape"):
        taylor(w, torch.zeros(2))


def test_score_dispatch_and_missing_gradient():
    w = torch.randn(4, 4)
    assert torch.equal(score("l1", w), w.abs())
    with pytest.raises(DataError, match="data="):
        score("taylor", w)


def test_accumulate_gradients_matches_autograd_and_restores_state():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3)).train()
    x, y = torch.randn(8, 6), torch.randint(0, 3, (8,))
    batches = [(x[:4], y[:4]), (x[4:], y[4:])]
    w = model[0].weight
    sums = accumulate_gradients(model, [w], batches, num_batches=2)
    expected = torch.zeros_like(w)
    for xb, yb in batches:
        expected += torch.autograd.grad(nn.functional.cross_entropy(model(xb), yb), w)[0]
    assert torch.allclose(sums[0], expected, atol=1e-6)
    assert w.grad is None and model.training
    moved = accumulate_gradients(model, [w], batches, num_batches=2, movement_score=True)
    assert torch.allclose(moved[0], -(w.detach() * expected), atol=1e-6)
    with pytest.raises(DataError):
        accumulate_gradients(model, [w], [], num_batches=2)
