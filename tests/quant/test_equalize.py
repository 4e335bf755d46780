"""Cross-layer equalization: the scales (pure), which pairs are found, the float model unchanged, ranges balanced;
high-bias absorption: exact on its data, activation ranges shrink, padded consumers and padded averages left alone."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as hs
from torch import nn

import slimtorch as st
from slimtorch.quant.equalize import (
    DEAD,
    ChannelClamp,
    _absorb_into_bias,
    absorb_high_biases,
    equalization_scales,
    equalize,
    find_pairs,
)


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
        pairs = equalize(model, x[:1], absorb=False)  # scaling alone: exact on every input, not only x[:1]
        torch.testing.assert_close(model(x), want, rtol=0, atol=1e-5)
        absorb_high_biases(model, pairs, x)  # measured on in-place ReLU6's input, not on what it overwrote
        torch.testing.assert_close(model(x), want, rtol=0, atol=1e-5)


def _high_bias(middle: list[nn.Module], consumer: nn.Module) -> nn.Sequential:
    """conv 3x3 (no padding) whose 16 channels sit 5..40 above zero -> ``middle`` -> ``consumer`` -> ReLU -> 1x1."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3), *middle, consumer, nn.ReLU(), nn.Conv2d(8, 4, 1)).eval()
    with torch.no_grad():
        model[0].bias.add_(torch.linspace(5, 40, 16))
        model[0].weight.mul_(torch.logspace(-1, 1, 16).view(16, 1, 1, 1))  # and ranges for equalization to balance
    return model


def _max_after(model: nn.Module, index: int, x: torch.Tensor) -> float:
    seen = []
    hook = model[index].register_forward_hook(lambda m, a, o: seen.append(float(o.max())))
    with torch.no_grad():
        model(x)
    hook.remove()
    return seen[0]


def _assert_unchanged(got: torch.Tensor, want: torch.Tensor) -> None:
    assert float((got - want).abs().max()) <= 1e-5 * float(want.abs().max())


def test_high_biases_are_absorbed_exactly_and_the_activation_range_shrinks():
    model = _high_bias([nn.ReLU()], nn.Conv2d(16, 8, 1))
    x = torch.randn(8, 3, 10, 10)
    with torch.no_grad():
        want = model(x)
        range_before, low_before = _max_after(model, 1, x), _low_share(model, x)
        pairs = equalize(model, x)
        got = model(x)
    _assert_unchanged(got, want)
    first = pairs[0]
    assert (first.producer, first.consumer, first.absorb_blocked) == ("0", "2", None)
    assert first.shifted == 16 and first.largest_shift > 0
    # every channel sat far above zero: the ReLU's output now starts near zero and its range shrinks with it
    assert _max_after(model, 1, x) < range_before / 3
    assert bool((low_before > 0.3).all()) and bool((_low_share(model, x) < 0.1).all())


def _low_share(model: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    """``[C]`` each channel's minimum after the first ReLU as a share of its maximum (scale-free: 0 = starts at 0)."""
    seen = []
    hook = model[1].register_forward_hook(lambda m, a, o: seen.append(o.amin((0, 2, 3)) / o.amax((0, 2, 3))))
    with torch.no_grad():
        model(x)
    hook.remove()
    return seen[0]


def test_absorption_off_leaves_the_biases_as_scaled():
    model = _high_bias([nn.ReLU()], nn.Conv2d(16, 8, 1))
    x = torch.randn(4, 3, 10, 10)
    bias, weight = model[0].bias.detach().clone(), model[0].weight.detach().clone()
    pairs = equalize(model, x, absorb=False)
    assert pairs[0].shifted == 0 and pairs[0].largest_shift == 0
    s = weight.abs().flatten(1).amax(1) / model[0].weight.detach().abs().flatten(1).amax(1)
    torch.testing.assert_close(model[0].bias.detach(), bias / s)


def test_padded_consumer_is_not_shifted_and_stays_exact_on_any_input():
    torch.manual_seed(0)
    model = _high_bias([nn.ReLU()], nn.Conv2d(16, 8, 3, padding=1))
    x, other = torch.randn(4, 3, 10, 10), torch.randn(4, 3, 10, 10)
    with torch.no_grad():
        want = model(other)
        range_before = _max_after(model, 1, x)
        pairs = equalize(model, x)
        got = model(other)
    assert pairs[0].absorb_blocked == "consumer pads with zeros" and pairs[0].shifted == 0
    _assert_unchanged(got, want)  # scaling only: exact beyond the example inputs
    assert _max_after(model, 1, x) > range_before / 10  # the channels 5..40 above zero were only rescaled


def test_clamp_bounds_follow_the_shift_and_stay_exact():
    # channels 0-7 sit around 3 (inside the ReLU6), channels 8-15 always above 6 (held at the bound)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3), nn.ReLU6(), nn.Conv2d(16, 8, 1), nn.ReLU(),
                          nn.Conv2d(8, 4, 1)).eval()
    with torch.no_grad():
        model[0].weight.mul_(0.3)
        model[0].bias.copy_(torch.tensor([3.0] * 8 + [12.0] * 8))
    x = torch.randn(8, 3, 10, 10)
    with torch.no_grad():
        want = model(x)
        pairs = equalize(model, x)
        got = model(x)
    _assert_unchanged(got, want)
    clamp = model[1]
    assert isinstance(clamp, ChannelClamp) and pairs[0].clamps == ("1",)
    assert pairs[0].shifted == 16
    assert bool((clamp.upper >= 0).all())
    torch.testing.assert_close(clamp.upper[8:], torch.zeros(8))  # held at the bound: shifted by all of it
    assert bool((clamp.upper[:8] > 0).all())


def test_linear_pairs_absorb_too():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 12), nn.ReLU(), nn.Dropout(), nn.Linear(12, 3)).eval()
    with torch.no_grad():
        model[0].bias.add_(20.0)
    x = torch.randn(32, 6)
    with torch.no_grad():
        want = model(x)
        pairs = equalize(model, x)
        got = model(x)
    _assert_unchanged(got, want)
    assert pairs[0].absorb_blocked is None and pairs[0].shifted == 12


@pytest.mark.parametrize("pool", [nn.MaxPool2d(2, padding=1), nn.AvgPool2d(2), nn.AvgPool2d(3, 1, 1, ceil_mode=True,
                                                                                           count_include_pad=False)])
def test_pools_that_commute_with_a_shift_are_absorbed_through(pool):
    model = _high_bias([nn.ReLU(inplace=True), pool, nn.Dropout()], nn.Conv2d(16, 8, 1))
    x = torch.randn(4, 3, 10, 10)
    with torch.no_grad():
        want = model(x)
        pairs = equalize(model, x)
        got = model(x)
    _assert_unchanged(got, want)
    assert pairs[0].absorb_blocked is None and pairs[0].shifted > 0


def test_an_average_over_zero_padding_blocks_absorption():
    model = _high_bias([nn.ReLU(), nn.AvgPool2d(3, 1, 1)], nn.Conv2d(16, 8, 1))
    pairs = equalize(model, torch.randn(4, 3, 10, 10))
    assert pairs[0].absorb_blocked == "avg_pool2d averages zero padding" and pairs[0].shifted == 0


@settings(max_examples=30, deadline=None)
@given(groups=hs.sampled_from([1, 2, 4]), kernel=hs.integers(1, 3), stride=hs.integers(1, 2),
       dilation=hs.integers(1, 2), seed=hs.integers(0, 2**16))
def test_a_consumer_bias_absorbs_a_constant_input_exactly(groups, kernel, stride, dilation, seed):
    torch.manual_seed(seed)
    conv = nn.Conv2d(8, 4, kernel, stride=stride, dilation=dilation, groups=groups)
    x, c = torch.randn(2, 8, 7, 7), torch.rand(8) * 10
    with torch.no_grad():
        want = conv(x)
        _absorb_into_bias(conv, c)
        got = conv(x - c.view(1, 8, 1, 1))
    torch.testing.assert_close(got, want, rtol=0, atol=1e-4)
