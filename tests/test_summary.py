"""StepSummary: the one place on a model where what the last step did is kept."""

import logging

from torch import nn

import slimtorch as st
from slimtorch.summary import StepSummary, add_details, last_summary, record


def test_record_keeps_the_summary_and_logs_each_skipped_layer(caplog):
    model = nn.Linear(2, 2)
    with caplog.at_level(logging.INFO, logger="slimtorch"):
        kept = record(model, StepSummary("X", ("a",), {"b": "too small"}))
    assert last_summary(model) is kept and "X: skipped b (too small)" in caplog.text
    assert "changed only" not in caplog.text  # half the layers changed: no warning


def test_little_change_warns(caplog):
    with caplog.at_level(logging.WARNING, logger="slimtorch"):
        record(nn.Linear(2, 2), StepSummary("X", (), {f"l{i}": "why" for i in range(12)}))
    assert "X changed only 0 of 12 layers" in caplog.text


def test_add_details_merges_without_logging_again(caplog):
    model = nn.Linear(2, 2)
    record(model, StepSummary("UnstructuredPruning", ("a",), {"b": "why"}, details={"overall": 0.5}))
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="slimtorch"):
        now = add_details(model, {"rounds": [0.3, 0.5]}, step="IterativePruning")
    assert caplog.text == ""
    assert now.step == "IterativePruning" and now.changed == ("a",) and now.skipped == {"b": "why"}
    assert now.details == {"overall": 0.5, "rounds": [0.3, 0.5]} and last_summary(model) is now
    fresh = nn.Linear(2, 2)
    assert last_summary(fresh) is None and add_details(fresh, {"k": 1}, step="S").details == {"k": 1}


def test_a_pruning_step_keeps_its_numbers_in_the_summary():
    model = nn.Sequential(nn.Linear(20, 20), nn.ReLU(), nn.Linear(20, 4))
    st.prune(model, st.UnstructuredPruning(sparsity=0.5, scope="layer"))
    summary = last_summary(model)
    assert summary.step == "UnstructuredPruning" and summary.changed == ("0",)
    assert summary.details["layers"] == {"0": 0.5} and summary.details["overall"] == 0.5
