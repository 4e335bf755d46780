"""Calibration observers against their definitions on known distributions."""

import torch

from slimtorch.quant.observers import (
    EntropyObserver,
    MinMaxObserver,
    MovingAverageMinMaxObserver,
    MSEObserver,
    PercentileObserver,
    expected_error,
)


def _feed(obs, batches):
    for b in batches:
        obs.observe(b)
    return obs


def test_minmax_and_moving_average():
    batches = [torch.tensor([-1.0, 2.0]), torch.tensor([-3.0, 1.0])]
    assert _feed(MinMaxObserver(), batches).range() == (-3.0, 2.0)
    lo, hi = _feed(MovingAverageMinMaxObserver(momentum=0.5), batches).range()
    assert (lo, hi) == (-2.0, 1.5)  # -1 + 0.5 * (-3 - -1), 2 + 0.5 * (1 - 2)


def test_percentile_of_uniform_sample():
    g = torch.Generator().manual_seed(0)
    obs = _feed(PercentileObserver(99.0), [torch.rand(100_000, generator=g) * 10 for _ in range(4)])
    lo, hi = obs.range()
    assert lo == 0.0
    assert abs(hi - 9.9) < 0.02  # the 99th percentile of U(0, 10), within a bin and sampling noise


def test_percentile_survives_rebinning():
    obs = _feed(PercentileObserver(50.0), [torch.linspace(0, 1, 10_001), torch.linspace(1, 3, 20_001)])
    assert abs(obs.range()[1] - 1.5) < 0.01  # median of the union


def test_mse_clips_outliers_and_beats_minmax():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200_000, generator=g)
    x[0], x[1] = 12.0, -12.0  # two outliers stretch the min-max range
    mse = _feed(MSEObserver(), [x])
    lo, hi = mse.range(bits=8)
    assert hi < 11.0  # clipped: the rounding error saved on 200k values outweighs two clipped ones
    c = mse.centers()
    assert expected_error(c, mse.hist, lo, hi, 8, False) < expected_error(c, mse.hist, -12.0, 12.0, 8, False)


def test_entropy_threshold_clips_a_long_tail():
    torch.manual_seed(0)
    x = torch.distributions.Laplace(0.0, 1.0).sample((200_000,))
    x[0] = 60.0
    lo, hi = _feed(EntropyObserver(), [x]).range(bits=8)
    assert lo == -hi and 3.0 < hi < 40.0


def test_entropy_threshold_ignores_the_spike_of_zeros_a_relu_makes():
    torch.manual_seed(0)
    x = torch.distributions.Laplace(0.0, 1.0).sample((200_000,)).abs()
    x[0] = 60.0
    _, alone = _feed(EntropyObserver(), [x]).range(bits=8)
    relu = torch.cat([x, torch.zeros(200_000)])  # half the values exactly 0, as after a ReLU
    lo, hi = _feed(EntropyObserver(), [relu]).range(bits=8)
    assert lo == 0.0 and abs(hi - alone) <= 0.05 * alone, (hi, alone)
