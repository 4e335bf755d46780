"""The tracer records a real forward: control flow, parameter names, module names, untraced blocks."""

import pytest
import torch
from torch import nn

from slimtorch.errors import DataError, UnsupportedModelError
from slimtorch.graph.trace import op_name, trace, untraced


class Branchy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.b = nn.Linear(4, 4)
        self.scale = nn.Parameter(torch.ones(4))

    def forward(self, x):
        if x.sum() > 0:  # python control flow: only the branch taken is recorded
            x = self.a(x)
        else:
            x = self.b(x)
        with untraced():
            _ = x * 2
        return x * self.scale


def test_records_the_branch_taken_with_parameter_and_module_names():
    tr = trace(Branchy(), torch.ones(1, 4))
    linears = [op for op in tr.ops if op.name == "linear"]
    assert [op.module for op in linears] == ["a"]
    assert "a.weight" in tr.params.values() and "b.weight" not in tr.params.values()
    muls = [op for op in tr.ops if op.name == "mul"]
    assert len(muls) == 1 and "scale" in [tr.params.get(r) for r in muls[0].refs()]
    assert tr.shapes[tr.outputs[0]] == (1, 4)
    tr2 = trace(Branchy(), -torch.ones(1, 4))
    assert [op.module for op in tr2.ops if op.name == "linear"] == ["b"]


def test_names_are_normalized():
    assert op_name(torch.Tensor.__iadd__) == "add"
    assert op_name(torch.Tensor.relu_) == "relu"
    assert op_name(torch.nn.functional.linear) == "linear"
    assert op_name(torch.Tensor.__radd__) == "add"


def test_errors_say_what_to_pass():
    with pytest.raises(DataError, match="example_inputs"):
        trace(Branchy(), None)
    with pytest.raises(UnsupportedModelError, match="example_inputs"):
        trace(Branchy(), torch.ones(1, 5))


def test_mode_is_restored():
    m = Branchy().train()
    trace(m, torch.ones(1, 4))
    assert m.training


def test_readers_and_module_calls_index_the_ops():
    from torch import nn

    from slimtorch.graph.trace import trace

    relu = nn.ReLU(inplace=True)
    model = nn.Sequential(nn.Linear(4, 4), relu, nn.Linear(4, 4), relu)
    tr = trace(model, torch.randn(2, 4))
    names = [op.name for op in tr.ops]
    assert names == ["linear", "relu", "linear", "relu"]
    readers = tr.readers()
    first_out = tr.ops[0].outputs[0]
    # the in-place ReLU returns the tensor it read; the second Linear reads its result under the same id
    assert tr.ops[1].outputs == [first_out] and readers[first_out] == [1, 2]
    assert tr.module_calls() == {"0": 1, "1": 2, "2": 1}  # the shared ReLU module ran twice
