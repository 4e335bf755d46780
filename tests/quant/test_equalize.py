"""Cross-layer equalization: the scales (pure), which pairs are found, the float model unchanged, ranges balanced."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as hs
from torch import nn

import slimtorch as st
from slimtorch.quant.equalize import DEAD, ChannelClamp, equalization_scales, equalize, find_pairs


def _mobile_block():
    """conv -> ReLU6 -> depthwise conv (channel ranges spread over 3 decades) -> ReLU -> pool -> 1x1 conv."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU6(), nn.Conv2d(16, 16, 3, padding=1, groups=16),
                          nn.ReLU(), nn.MaxPool2d(2), nn.Dropout(), nn.Conv2d(16, 8, 1), nn.ReLU6(),
                          nn.Conv2d(8, 8, 1), nn.Flatten(), nn.Linear(8 * 6 * 6, 5)).eval()
    with torch.no_grad():
        model[2].weight.mul_(torch.logspace(-2, 1, 16).view(16, 1, 1, 1))
    return model


@settings(max_examples=40, deadline=None)
@given(hs.lists(hs.floats(0, 100), min_size=1, max_size=8), hs.lists(hs.floats(0, 100), min_size=1, max_size=8))
def test_scales_give_both_layers_the_geometric_mean_range(r1, r2):
    n = min(len(r1), len(r2))
    a, b = torch.tensor(r1[:n]), torch.tensor(r2[:n])
    s = equalization_scales(a, b)
    assert bool((s > 0).all())
    live = (a > DEAD) & (b > DEAD)
    torch.testing.assert_close((a / s)[live], (b * s)[live], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close((a / s)[live], torch.sqrt(a * b)[live], rtol=1e-4, atol=1e-6)
    assert bool((s[~live] == 1).all())  # a dead channel is left alone


def test_pairs_follow_relu6_pooling_and_dropout_and_stop_at_flatten():
    model = _mobile_block()
    pairs = find_pairs(model, torch.randn(1, 3, 12, 12))
    assert [(p.producer, p.consumer, p.clamps) for p in pairs] == [("0", "2", ("1",)), ("2", "6", ()),
                                                                   ("6", "8", ("7",))]


def test_residual_adds_and_shared_outputs_end_a_chain():
    class Residual(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c = nn.Conv2d(4, 4, 1), nn.Conv2d(4, 4, 1), nn.Conv2d(4, 4, 1)

        def forward(self, x):
            y = torch.relu(self.a(x))
            return self.c(self.b(y) + y)  # a's output is read twice; b's output goes into an add

    assert find_pairs(Residual(), torch.randn(1, 4, 5, 5)) == []


@pytest.mark.parametrize("batch", [1, 7])
def test_float_outputs_are_unchanged_and_ranges_balanced(batch):
    model = _mobile_block()
    x = torch.randn(batch, 3, 12, 12)
    with torch.no_grad():
        want = model(x)
        spread_before = _spread(model[2])
        pairs = equalize(model, x[:1])
        got = model(x)
    assert len(pairs) == 3
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    assert isinstance(model[1], ChannelClamp) and isinstance(model[7], ChannelClamp)
    # the depthwise layer's per-channel ranges spread over 3 decades before; after, what is left is the spread its
    # neighbours' ranges impose (it sits in two pairs and is balanced against both)
    assert spread_before > 500 and _spread(model[2]) < spread_before / 50
    r1 = model[6].weight.detach().abs().flatten(1).amax(1)
    r2 = model[8].weight.detach().abs().amax((0, 2, 3))
    torch.testing.assert_close(r1, r2, rtol=1e-3, atol=0)  # the last pair of the pass ends exactly balanced


def _spread(conv: nn.Conv2d) -> float:
    r = conv.weight.detach().abs().flatten(1).amax(1)
    return float(r.max() / r.min())


def test_equalized_model_saves_and_loads(tmp_path):
    model = _mobile_block()
    x = torch.randn(2, 3, 12, 12)
    equalize(model, x[:1])
    loaded = st.load(st.save(model, tmp_path / "m"), model=_mobile_block())
    assert isinstance(loaded[1], ChannelClamp)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_static_quant_with_equalize_records_the_pairs_and_stays_close():
    from slimtorch.summary import last_summary

    model = _mobile_block()
    data = [torch.randn(8, 3, 12, 12) for _ in range(4)]
    with torch.no_grad():
        want = model(data[0])
    st.quantize(model, st.StaticQuant(equalize=True), data=data)
    assert last_summary(model).details["equalized"] == [["0", "2"], ["2", "6"], ["6", "8"]]
    with torch.no_grad():
        cos = torch.nn.functional.cosine_similarity(model(data[0]).flatten(), want.flatten(), dim=0)
    assert float(cos) > 0.999


def test_in_place_activations_are_followed_only_when_they_commute_with_the_scale():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU6(inplace=True), nn.Conv2d(8, 8, 1), nn.SiLU(inplace=True),
                          nn.Conv2d(8, 8, 1), nn.ReLU(inplace=True), nn.Conv2d(8, 4, 1)).eval()
    x = torch.randn(2, 3, 9, 9)
    pairs = find_pairs(model, x[:1])
    # the in-place SiLU reads the second conv's output first: scaling through it would change the model
    assert [(p.producer, p.consumer, p.clamps) for p in pairs] == [("0", "2", ("1",)), ("4", "6", ())]
    with torch.no_grad():
        want = model(x)
        equalize(model, x[:1])
        torch.testing.assert_close(model(x), want, rtol=0, atol=1e-5)
