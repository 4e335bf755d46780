"""layer_kinds: which subclasses' forward slimtorch knows, and the plain layer each computes."""

import pytest
import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from slimtorch.layer_kinds import as_plain, layer_kind, pad_same
from slimtorch.select import select, swappable
from slimtorch.summary import StepSummary, last_summary, record


class LoggedLinear(nn.Linear):
    def forward(self, x):
        return super().forward(x)


class DoubledLinear(nn.Linear):
    def forward(self, x):
        return 2 * super().forward(x)


class TFSameConv(nn.Conv2d):
    """A TensorFlow port's convolution: padding 0, "same" padding applied in forward."""

    def forward(self, x):
        return super().forward(pad_same(x, self.kernel_size, self.stride, self.dilation))


def test_kinds():
    from timm.layers import Conv2dSame, StdConv2d

    assert layer_kind(nn.Linear(4, 3)).kind == "plain"
    assert layer_kind(LoggedLinear(4, 3)).kind == "plain"
    assert layer_kind(DoubledLinear(4, 3)).kind == "unknown"
    assert "DoubledLinear" in layer_kind(DoubledLinear(4, 3)).reason
    assert layer_kind(TFSameConv(3, 8, 3, stride=2)).kind == "same_pad"
    assert layer_kind(Conv2dSame(3, 8, 3, stride=2)).kind == "same_pad"
    assert layer_kind(StdConv2d(3, 8, 3)).kind == "unknown"  # standardizes its weight in forward
    assert layer_kind(Conv1D(6, 4)).kind == "transposed"


def test_probe_leaves_random_state_and_mode():
    conv = TFSameConv(3, 8, 3, stride=2).train()
    state = torch.get_rng_state()
    layer_kind(conv)
    assert torch.equal(state, torch.get_rng_state()) and conv.training


@pytest.mark.parametrize("stride", [1, 2])
def test_as_plain_computes_the_same(stride):
    x = torch.randn(2, 3, 11, 12)
    conv = TFSameConv(3, 8, 3, stride=stride)
    plain = as_plain(conv)
    assert type(plain) is nn.Conv2d and plain.padding == (0, 0)
    torch.testing.assert_close(plain(pad_same(x, plain.kernel_size, plain.stride, plain.dilation)), conv(x))
    gpt = Conv1D(6, 4)
    linear = as_plain(gpt)
    assert type(linear) is nn.Linear and linear.weight.shape == (6, 4)
    h = torch.randn(2, 5, 4)
    torch.testing.assert_close(linear(h), gpt(h))


def test_select_counts_conv1d_as_linear_and_swappable_sets_unknown_aside():
    model = nn.Sequential(Conv1D(8, 4), DoubledLinear(8, 8), nn.Linear(8, 2))
    assert [n for n, _ in select(model, [nn.Linear])] == ["0", "1", "2"]
    chosen, skipped = swappable(model, [nn.Linear])
    assert [n for n, _ in chosen] == ["0", "2"]
    assert list(skipped) == ["1"] and "forward of its own" in skipped["1"]


def test_record_keeps_the_last_summary_and_warns_when_little_changed(caplog):
    model = nn.Linear(2, 2)
    with caplog.at_level("INFO", logger="slimtorch"):
        record(model, StepSummary("DynamicQuant", changed=(), skipped={f"l{i}": "why" for i in range(10)}))
    assert last_summary(model).step == "DynamicQuant"
    assert "skipped l3 (why)" in caplog.text
    assert "changed only 0 of 10" in caplog.text
