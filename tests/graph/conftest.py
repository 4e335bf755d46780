"""Helpers shared by the graph tests."""

import copy

import pytest
import torch

from slimtorch.graph.groups import build
from slimtorch.graph.surgery import shrink


@pytest.fixture()
def cut():
    """``cut(model, x, producer, keep)``: a copy of ``model`` whose group produced by ``producer`` keeps only the
    channels ``keep`` (the group must be prunable)."""

    def run(model, x, producer, keep):
        graph = build(model, x)
        group = next(g for g in graph.groups if producer in g.producers)
        assert group.prunable, group.frozen
        pruned = copy.deepcopy(model)
        shrink(pruned, graph, {group.id: torch.tensor(keep)})
        return pruned

    return run
