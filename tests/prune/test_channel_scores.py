"""Channel scores on hand-built layers: per-dim norms, group scores, keep counts, Taylor grads, BN recalibration."""

from fractions import Fraction

import pytest
import torch
from torch import nn

from slimtorch.errors import ConfigError, DataError
from slimtorch.graph.groups import build
from slimtorch.prune.channel_scores import (
    choose_channels,
    dim_scores,
    group_scores,
    keep_count,
    recalibrate_batchnorm,
    slimming_regularizer,
    taylor_grads,
    to_channels,
)


def _conv_bn_conv():
    """conv(2->4, no bias) -> BN(4) -> ReLU -> conv(4->3, 1x1), with known weights; and its 4-channel group."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 4, 3, bias=False), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 3, 1))
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([0.5, -2.0, 0.0, 1.0]))
        model[1].bias.copy_(torch.tensor([0.1, 0.0, -0.3, 0.2]))
    graph = build(model, torch.randn(1, 2, 6, 6))
    (group,) = [g for g in graph.groups if g.size == 4]
    return model, graph, group


def test_dim_scores_of_a_conv_weight_are_per_output_channel_norms():
    w = torch.randn(5, 3, 2, 2)
    torch.testing.assert_close(dim_scores(w, 0), torch.stack([w[i].abs().sum() for i in range(5)]))
    torch.testing.assert_close(dim_scores(w, 0, "l2"), torch.stack([w[i].pow(2).sum() for i in range(5)]))
    torch.testing.assert_close(dim_scores(w, 1), torch.stack([w[:, j].abs().sum() for j in range(3)]))
    assert dim_scores(w.half(), 0).dtype == torch.float32  # scores are float32 whatever the weight dtype


def test_dim_scores_do_not_track_gradients():
    w = torch.randn(3, 4, requires_grad=True)
    assert not dim_scores(w, 0).requires_grad


def test_to_channels_ignores_other_spaces_and_spreads_head_scores():
    # entries 0-1 belong to space 7, entries 2-4 to space 3 (the one scored)
    label = ((7, 0, 2, Fraction(1)), (3, 0, 3, Fraction(1)))
    out = to_channels(torch.tensor([100.0, 200.0, 1.0, 2.0, 3.0]), label, 3, 3)
    assert out.tolist() == [1.0, 2.0, 3.0]
    # two heads of two channels each: one entry per head, every channel of the head gets its score
    heads = ((0, 0, 4, Fraction(1, 2)),)
    assert to_channels(torch.tensor([5.0, 7.0]), heads, 0, 4).tolist() == [5.0, 5.0, 7.0, 7.0]
    # a slice of a space (channels 2..4 of 5) leaves the other channels at zero
    part = ((0, 2, 4, Fraction(1)),)
    assert to_channels(torch.tensor([1.0, 2.0]), part, 0, 5).tolist() == [0.0, 0.0, 1.0, 2.0, 0.0]


def test_group_scores_l1_sum_every_coupled_parameter():
    model, graph, group = _conv_bn_conv()
    c1, bn, c2 = model[0].weight.detach(), model[1], model[3].weight.detach()
    expected = (c1.abs().sum((1, 2, 3)) + bn.weight.detach().abs() + bn.bias.detach().abs()
                + c2.abs().sum((0, 2, 3)))
    got = group_scores(model, graph, group, "l1", None, torch.Generator())
    torch.testing.assert_close(got, expected)


def test_group_scores_l2_is_the_root_of_the_summed_squares():
    model, graph, group = _conv_bn_conv()
    c1, bn, c2 = model[0].weight.detach(), model[1], model[3].weight.detach()
    expected = (c1.pow(2).sum((1, 2, 3)) + bn.weight.detach().pow(2) + bn.bias.detach().pow(2)
                + c2.pow(2).sum((0, 2, 3))).sqrt()
    torch.testing.assert_close(group_scores(model, graph, group, "l2", None, torch.Generator()), expected)


def test_group_scores_bn_scale_is_the_absolute_batchnorm_gamma():
    model, graph, group = _conv_bn_conv()
    got = group_scores(model, graph, group, "bn_scale", None, torch.Generator())
    assert got.tolist() == [0.5, 2.0, 0.0, 1.0]


def test_group_scores_bn_scale_without_a_norm_falls_back_to_l1():
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2))
    graph = build(model, torch.randn(1, 4))
    (group,) = [g for g in graph.groups if g.size == 6]
    w1, b1, w2 = model[0].weight.detach(), model[0].bias.detach(), model[2].weight.detach()
    expected = w1.abs().sum(1) + b1.abs() + w2.abs().sum(0)
    torch.testing.assert_close(group_scores(model, graph, group, "bn_scale", None, torch.Generator()), expected)
    # taylor without gradients falls back the same way
    torch.testing.assert_close(group_scores(model, graph, group, "taylor", None, torch.Generator()), expected)


def test_group_scores_taylor_uses_weight_times_gradient():
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2))
    graph = build(model, torch.randn(1, 4))
    (group,) = [g for g in graph.groups if g.size == 6]
    grads = {n: torch.full_like(p, 2.0) for n, p in model.named_parameters()}
    w1, b1, w2 = model[0].weight.detach(), model[0].bias.detach(), model[2].weight.detach()
    expected = 2 * (w1.abs().sum(1) + b1.abs() + w2.abs().sum(0))
    torch.testing.assert_close(group_scores(model, graph, group, "taylor", grads, torch.Generator()), expected)


def test_group_scores_random_follow_the_generator():
    model, graph, group = _conv_bn_conv()
    a = group_scores(model, graph, group, "random", None, torch.Generator().manual_seed(5))
    b = group_scores(model, graph, group, "random", None, torch.Generator().manual_seed(5))
    assert a.shape == (4,) and torch.equal(a, b) and ((a >= 0) & (a < 1)).all()


def test_keep_count_rounds_to_the_step_and_clamps():
    assert keep_count(10, 0.0, step=1, max_ratio=0.9) == 10
    assert keep_count(10, 0.3, step=1, max_ratio=0.9) == 7
    assert keep_count(16, 0.5, step=4, max_ratio=0.9) == 8
    assert keep_count(16, 0.9, step=4, max_ratio=0.9) == 4  # at least one step
    assert keep_count(20, 0.9, step=1, max_ratio=0.5) == 10  # at most half removed
    assert keep_count(3, 0.1, step=8, max_ratio=0.9) == 3  # never more than the group has


@pytest.mark.parametrize(("size", "expected"), [(10, 3), (100, 30)])
def test_keep_count_allows_removing_exactly_max_ratio(size, expected):
    assert keep_count(size, 0.95, step=1, max_ratio=0.7) == expected


def test_choose_channels_takes_the_best_sorted_and_respects_blocks_and_groups():
    scores = torch.tensor([0.1, 0.9, 0.5, 0.2, 0.05, 0.3])
    assert choose_channels(scores, 3).tolist() == [1, 2, 5]
    # blocks of 2: unit sums 1.0, 0.7, 0.35 -> the two best units
    assert choose_channels(scores, 4, block=2).tolist() == [0, 1, 2, 3]
    # 2 groups of 3: best one of each group, though channel 2 beats all of group 2
    assert choose_channels(scores, 2, groups=2).tolist() == [1, 5]


def test_slimming_regularizer_is_a_soft_threshold_and_rejects_negative_strength():
    model = nn.Sequential(nn.Conv2d(1, 4, 1), nn.BatchNorm2d(4), nn.BatchNorm2d(4, affine=False))
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([0.5, -0.5, 0.05, -0.08]))
        bias = model[1].bias.clone()
        conv = model[0].weight.clone()
    slimming_regularizer(0.1)(model)
    torch.testing.assert_close(model[1].weight.detach(), torch.tensor([0.4, -0.4, 0.0, 0.0]))
    assert torch.equal(model[1].bias, bias) and torch.equal(model[0].weight, conv)
    with pytest.raises(ConfigError, match="strength"):
        slimming_regularizer(-1e-3)


def test_taylor_grads_sum_the_cross_entropy_gradients_and_restore_the_model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 3)).train()
    x, y = torch.randn(6, 5), torch.randint(0, 3, (6,))
    batches = [(x[:3], y[:3]), (x[3:], y[3:]), (x, y)]
    grads = taylor_grads(model, batches, 2)  # only the first two batches
    expected = torch.zeros_like(model[0].weight)
    for xb, yb in batches[:2]:
        expected += torch.autograd.grad(nn.functional.cross_entropy(model(xb), yb), model[0].weight)[0]
    torch.testing.assert_close(grads["0.weight"], expected)
    assert set(grads) == {"0.weight", "0.bias", "2.weight", "2.bias"}
    assert model.training and all(p.grad is None for p in model.parameters())


def test_taylor_grads_of_unlabelled_data_use_the_mean_square_output():
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    x = torch.randn(4, 3)
    grads = taylor_grads(model, [x], 5)
    expected = torch.autograd.grad(model(x).pow(2).mean(), model.weight)[0]
    torch.testing.assert_close(grads["weight"], expected)


def test_taylor_grads_need_data():
    model = nn.Linear(3, 2)
    with pytest.raises(DataError, match="taylor"):
        taylor_grads(model, None, 1)
    with pytest.raises(DataError, match="no batch"):
        taylor_grads(model, [], 1)


def test_recalibration_is_a_cumulative_average_of_the_batch_statistics():
    model = nn.Sequential(nn.BatchNorm1d(3)).eval()
    model[0].momentum = 0.3
    with torch.no_grad():
        model[0].running_mean.fill_(50.0)
    a = torch.randn(8, 3)
    b = torch.randn(8, 3) * 2 + 5
    assert recalibrate_batchnorm(model, [a, b, torch.randn(8, 3) + 100], 2) == 2
    torch.testing.assert_close(model[0].running_mean, torch.cat([a, b]).mean(0))  # equal batch sizes
    torch.testing.assert_close(model[0].running_var, (a.var(0) + b.var(0)) / 2)
    assert int(model[0].num_batches_tracked) == 2
    assert not model.training and model[0].momentum == 0.3


def test_recalibration_reads_the_calibration_split_of_a_zoo_like_object():
    class Data:
        calibration = [(torch.full((4, 2), 3.0) + torch.arange(4.0)[:, None], torch.zeros(4))]
        train = [(torch.zeros(4, 2), torch.zeros(4))]

    model = nn.BatchNorm1d(2)
    assert recalibrate_batchnorm(model, Data(), 10) == 1
    torch.testing.assert_close(model.running_mean, torch.tensor([4.5, 4.5]))
    assert model.training


def test_recalibration_without_batchnorm_does_nothing():
    model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2, track_running_stats=False))
    assert recalibrate_batchnorm(model, [torch.randn(4, 2)], 3) == 0
