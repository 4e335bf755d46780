"""Empirical bias correction: the mean output shift of each quantized layer on the calibration data goes away."""

import copy

import torch
from torch import nn

import slimtorch as st
from slimtorch.quant.bias_correction import channel_mean, correct_biases
from slimtorch.summary import last_summary


def _net():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1),
                          nn.ReLU(), nn.Flatten(), nn.Linear(16 * 8 * 8, 6)).eval()
    with torch.no_grad():  # coarse weight grids: a few large weights per channel set the scale
        for layer in (model[0], model[2], model[5]):
            layer.weight.view(layer.weight.shape[0], -1)[:, 0] *= 40
    return model


def test_channel_mean_sums_every_dimension_but_the_channel():
    x = torch.arange(24, dtype=torch.float32).reshape(2, 3, 4)
    sums, count = channel_mean(x, 1)
    assert count == 8 and torch.equal(sums, x.double().sum((0, 2)))
    sums, count = channel_mean(x, -1)
    assert count == 6 and torch.equal(sums, x.double().sum((0, 1)))


def _shift(quantized, reference, name, batches):
    with torch.no_grad():
        outs = {}
        for tag, model in (("q", quantized), ("f", reference)):
            layer = model.get_submodule(name)
            got = []
            hook = layer.register_forward_hook(lambda m, a, o, got=got: got.append(
                m.reference(a[0]) if hasattr(m, "reference") and not m.relu else o))
            for x in batches:
                model(x)
            hook.remove()
            outs[tag] = torch.cat(got)
    dim = 1 if outs["q"].dim() == 4 else -1
    mean = (outs["q"] - outs["f"]).movedim(dim, -1).reshape(-1, outs["q"].shape[dim]).mean(0)
    return float(mean.abs().max())


def test_correction_removes_the_mean_shift_on_the_calibration_data():
    batches = [torch.randn(8, 3, 8, 8) for _ in range(4)]
    reference = _net()
    plain = st.quantize(_net(), st.StaticQuant(fuse_relu=False), data=batches)
    corrected = st.quantize(_net(), st.StaticQuant(fuse_relu=False, bias_correction=True), data=batches)
    removed = last_summary(corrected).details["bias_correction"]
    assert list(removed) == ["0", "2", "5"] and all(v > 0 for v in removed.values())
    for name in ("2", "5"):
        before, after = _shift(plain, reference, name, batches), _shift(corrected, reference, name, batches)
        # what is left is the rounding of the bias to its int32 grid and the codes the new bias moves
        assert after < 0.25 * before, (name, before, after)


def test_fused_relu_layers_are_corrected_on_their_pre_activation():
    batches = [torch.randn(8, 3, 8, 8) for _ in range(4)]
    model = st.quantize(_net(), st.StaticQuant(), data=batches)
    reference = _net()
    assert model[0].relu and model[2].relu
    bias = model[2].bias.clone()
    correct_biases(model, reference, ["0", "2", "5"], batches)
    assert not torch.equal(model[2].bias, bias) and model[2].relu  # fused ReLU kept, bias moved
    with torch.no_grad():
        cos = torch.nn.functional.cosine_similarity(model(batches[0]).flatten(), reference(batches[0]).flatten(),
                                                    dim=0)
    assert float(cos) > 0.99


def test_a_layer_without_bias_gets_one():
    batches = [torch.randn(8, 3, 8, 8) for _ in range(2)]
    model = copy.deepcopy(_net())
    st.quantize(model, st.StaticQuant(fold_bn=False, bias_correction=True), data=batches)
    assert model[0].bias is not None and model[0].bias.shape == (16,)
