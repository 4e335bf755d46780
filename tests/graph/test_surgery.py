"""Surgery: conv-bn folding is exact; shrinking fixes layer attributes; tied weights stay tied."""

import copy

import pytest
import torch
from torch import nn

from slimtorch.graph.groups import build
from slimtorch.graph.surgery import fold_batchnorms, fold_conv_bn, shrink
from slimtorch.zoo.models import DigitsCNN


def trained_bn(c):
    bn = nn.BatchNorm2d(c)
    with torch.no_grad():
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-1, 1)
    return bn.eval()


@pytest.mark.parametrize("bias", [True, False])
def test_fold_conv_bn_matches_conv_then_bn(bias):
    conv, bn = nn.Conv2d(3, 8, 3, padding=1, bias=bias), trained_bn(8)
    x = torch.randn(2, 3, 9, 9)
    fused = fold_conv_bn(conv, bn)
    torch.testing.assert_close(fused(x), bn(conv(x)), atol=1e-5, rtol=1e-5)
    assert fused is not conv and fused.bias is not None


def test_fold_conv_bn_rejects_mismatch():
    with pytest.raises(ValueError, match="BatchNorm"):
        fold_conv_bn(nn.Conv2d(3, 8, 1), trained_bn(4))


def test_fold_batchnorms_on_a_resnet():
    model = DigitsCNN().eval()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.load_state_dict(trained_bn(m.num_features).state_dict())
    x = torch.randn(2, 1, 16, 16)
    expected = model(x)
    pairs = fold_batchnorms(model, x)
    assert len(pairs) == 9 and not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    torch.testing.assert_close(model(x), expected, atol=1e-5, rtol=1e-5)


def test_shrink_fixes_attributes_and_keeps_the_chosen_channels():
    model = DigitsCNN()
    x = torch.randn(1, 1, 16, 16)
    original = copy.deepcopy(model)
    g = build(model, x)
    grp = next(g2 for g2 in g.groups if "layer1.conv1" in g2.producers)
    keep = torch.tensor([0, 5, 7])
    shrink(model, g, {grp.id: keep})
    assert model.layer1.conv1.out_channels == 3 and model.layer1.bn1.num_features == 3
    assert model.layer1.conv2.in_channels == 3
    torch.testing.assert_close(model.layer1.conv1.weight, original.layer1.conv1.weight[keep])
    torch.testing.assert_close(model.layer1.conv2.weight, original.layer1.conv2.weight[:, keep])
    assert model(x).shape == (1, 10)


class _BatchNormAct(nn.BatchNorm2d):
    """timm's BatchNormAct2d in miniature: normalization, then an activation, in one BatchNorm subclass."""

    def __init__(self, channels: int) -> None:
        super().__init__(channels)
        self.act = nn.Hardswish()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(super().forward(x))


def test_fold_batchnorms_leaves_a_batchnorm_subclass_with_its_own_forward():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), _BatchNormAct(8), nn.Conv2d(8, 8, 3), nn.BatchNorm2d(8)).eval()
    model[1].load_state_dict(trained_bn(8).state_dict(), strict=False)
    x = torch.randn(2, 3, 12, 12)
    expected = model(x)
    pairs = fold_batchnorms(model, x)
    assert pairs == [("2", "3")] and isinstance(model[1], _BatchNormAct)
    torch.testing.assert_close(model(x), expected, atol=1e-5, rtol=1e-5)
