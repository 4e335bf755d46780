"""The schedules' handlers: gradual pruning inside the fine-tuning loop and iterative prune/fine-tune rounds, through
``st.prune``."""

import pytest
import torch

import slimtorch as st
from slimtorch.prune.schedule import iterative_sparsities
from slimtorch.summary import last_summary


@pytest.mark.parametrize("importance", ["l1", "movement"])
def test_gradual_pruning_through_prune_reaches_the_target_and_learns(importance, small_mlp, xor_task):
    model = small_mlp()
    data = xor_task
    cfg = st.GradualPruning(sparsity=0.9, epochs=6, frequency=4, importance=importance, lr=1e-2)
    st.prune(model, cfg, data=data)
    assert last_summary(model).details["overall"] == pytest.approx(0.9, abs=1e-3)
    with torch.no_grad():
        acc = sum(float((model(x).argmax(1) == y).sum()) for x, y in data) / 256
    assert acc > 0.85


def test_iterative_pruning_rounds(small_mlp, xor_task):
    model = small_mlp()
    st.prune(model, st.IterativePruning(sparsity=0.9, rounds=3, epochs_per_round=1, lr=1e-2), data=xor_task)
    rounds = last_summary(model).details["rounds"]
    assert rounds == pytest.approx(iterative_sparsities(0.9, 3), abs=1e-3)
    assert int((model[0].weight == 0).sum()) + int((model[2].weight == 0).sum()) == round(0.9 * (640 + 4096))


def test_schedules_need_training_data(small_mlp):
    with pytest.raises(st.DataError, match="data="):
        st.prune(small_mlp(), st.GradualPruning())
    with pytest.raises(st.DataError, match="data="):
        st.prune(small_mlp(), st.IterativePruning())
