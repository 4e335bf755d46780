"""The zoo's model builders: output and intermediate shapes, parameter counts and multiply-adds, residual blocks."""

import pytest
import torch
from torch import nn

from slimtorch.measure.flops import count_flops
from slimtorch.zoo.models import BasicBlock, DigitsCNN, DigitsMLP, DigitsMobileNet, InvertedResidual


def n_params(model):
    return sum(p.numel() for p in model.parameters())


def cnn_params(w1, w2, w3, classes=10):
    convs = 9 * (1 * w1 + 2 * w1 * w1 + w1 * w2 + 2 * w2 * w2 + w2 * w3 + 2 * w3 * w3)
    bns = 2 * (3 * w1 + 3 * w2 + 3 * w3)
    return convs + bns + w3 * classes + classes


def test_mlp_output_shape_and_parameter_count():
    model = DigitsMLP()
    assert model(torch.randn(5, 64)).shape == (5, 10)
    assert n_params(model) == 64 * 1024 + 1024 + 1024 * 1024 + 1024 + 1024 * 10 + 10 == 1_126_410
    small = DigitsMLP(in_features=16, hidden=8, num_classes=3)
    assert small(torch.randn(2, 16)).shape == (2, 3)
    assert n_params(small) == 16 * 8 + 8 + 8 * 8 + 8 + 8 * 3 + 3


def test_mlp_forward_is_linear_relu_linear_relu_linear():
    torch.manual_seed(0)
    model = DigitsMLP(in_features=4, hidden=6, num_classes=2)
    x = torch.randn(3, 4)
    relu = torch.relu
    expected = model.head(relu(model.fc2(relu(model.fc1(x)))))
    torch.testing.assert_close(model(x), expected)


def test_cnn_output_shape_and_parameter_count():
    model = DigitsCNN()
    assert model(torch.randn(2, 1, 16, 16)).shape == (2, 10)
    assert n_params(model) == cnn_params(32, 64, 128) == 482_154
    narrow = DigitsCNN(widths=(4, 8, 16), num_classes=3)
    assert narrow(torch.randn(2, 1, 16, 16)).shape == (2, 3)
    assert n_params(narrow) == cnn_params(4, 8, 16, 3)
    assert all(m.bias is None for m in model.modules() if isinstance(m, nn.Conv2d))


def test_cnn_stage_shapes_halve_the_resolution():
    model = DigitsCNN(widths=(4, 8, 16))
    shapes = {}
    for name in ("stem", "layer1", "layer2", "layer3"):
        getattr(model, name).register_forward_hook(lambda m, i, o, name=name: shapes.__setitem__(name, o.shape))
    model(torch.randn(2, 1, 16, 16))
    assert shapes == {"stem": (2, 4, 16, 16), "layer1": (2, 4, 16, 16), "layer2": (2, 8, 8, 8),
                      "layer3": (2, 16, 4, 4)}


def test_cnn_multiply_adds_match_a_hand_count():
    model = DigitsCNN().eval()
    macs = []

    def hook(m, i, o):
        if isinstance(m, nn.Conv2d):
            macs.append(o.numel() * m.in_channels // m.groups * m.kernel_size[0] * m.kernel_size[1])
        elif isinstance(m, nn.Linear):
            macs.append(o.numel() * m.in_features)

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    x = torch.randn(1, 1, 16, 16)
    with torch.no_grad():
        model(x)
    assert sum(macs) == 16_590_080  # "about 16.5M multiply-adds per image"
    for h in handles:
        h.remove()
    assert count_flops(model, x) == 2 * 16_590_080


def test_basic_block_keeps_the_shape_and_adds_the_identity():
    torch.manual_seed(0)
    block = BasicBlock(3).eval()
    x = torch.randn(2, 3, 5, 5)
    out = block(x)
    assert out.shape == x.shape and (out >= 0).all()
    with torch.no_grad():
        block.bn2.weight.zero_()
        block.bn2.bias.zero_()
    torch.testing.assert_close(block(x), torch.relu(x))  # the residual branch is silenced: relu(identity)


@pytest.mark.parametrize("build", [DigitsMLP, DigitsCNN])
def test_builders_start_in_training_mode_with_gradients(build):
    model = build()
    assert model.training and all(p.requires_grad for p in model.parameters())


def test_mobilenet_shapes_depthwise_layers_and_shortcuts():
    model = DigitsMobileNet().eval()
    assert model(torch.randn(3, 1, 16, 16)).shape == (3, 10)
    depthwise = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.groups > 1]
    assert len(depthwise) == 5 and all(m.groups == m.in_channels == m.out_channels for m in depthwise)
    assert sum(isinstance(m, nn.ReLU6) for m in model.modules()) == 2 * 5 + 2
    assert [b.shortcut for b in model.blocks] == [True, False, True, False, True]
    block = InvertedResidual(8, 8, 1).eval()
    x = torch.randn(2, 8, 6, 6)
    with torch.no_grad():  # the shortcut adds the input to the projection
        torch.testing.assert_close(block(x), block.project(block.depthwise(block.expand(x))) + x)
    assert InvertedResidual(8, 12, 2)(x).shape == (2, 12, 3, 3)
