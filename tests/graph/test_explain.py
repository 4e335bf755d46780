"""The printout names groups, their layers and why a group is kept; warnings name untouched layers."""

import warnings

import torch
from torch import nn

from slimtorch.graph.explain import explain, warn_untouched
from slimtorch.graph.groups import build
from slimtorch.zoo.models import DigitsCNN


def test_explain_lists_groups_and_reasons():
    text = explain(build(DigitsCNN(), torch.randn(1, 1, 16, 16)))
    assert "layer1.conv1.weight[dim 0]" in text and "prunable" in text
    assert "kept (it reaches the model's output" in text


def test_warning_names_layers_left_untouched():
    class Odd(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(4, 6), nn.Linear(6, 2)

        def forward(self, x):
            return self.b(torch.cumprod(self.a(x), dim=0))

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warn_untouched(build(Odd(), torch.randn(3, 4)))
    assert len(caught) == 1 and "a (op 'cumprod'" in str(caught[0].message)
