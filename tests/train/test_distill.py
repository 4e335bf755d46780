"""Distillation losses (pure) and the feature taps."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import slimtorch as st
from slimtorch.train.distill import FeatureTap, feature_mse, soft_target_kl


def test_soft_target_kl_is_zero_for_equal_logits_and_matches_the_formula():
    torch.manual_seed(0)
    s, t = torch.randn(6, 5), torch.randn(6, 5)
    assert float(soft_target_kl(t, t, 4.0)) == pytest.approx(0.0, abs=1e-6)
    p_t = F.softmax(t / 2.0, -1)
    expected = (p_t * (p_t.log() - F.log_softmax(s / 2.0, -1))).sum(-1).mean() * 4.0
    assert float(soft_target_kl(s, t, 2.0)) == pytest.approx(float(expected), rel=1e-5)


def test_feature_mse_is_scale_free_and_checks_shapes():
    t = torch.randn(4, 8)
    assert float(feature_mse([t], [t], ["a"])) == 0.0
    # the same relative error at two scales gives the same loss
    assert float(feature_mse([1.1 * t], [t], ["a"])) == pytest.approx(float(feature_mse([110 * t], [100 * t], ["a"])))
    with pytest.raises(st.ConfigError, match="'a'"):
        feature_mse([torch.randn(4, 7)], [t], ["a"])


def test_feature_tap_records_and_removes_hooks():
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    x = torch.randn(2, 3)
    with FeatureTap(model, ["0", "2"]) as tap:
        out = model(x)
        first, last = tap.features()
        assert torch.equal(last, out) and torch.equal(first, model[0](x))
    assert all(len(m._forward_hooks) == 0 for m in model.modules())
    with pytest.raises(st.ConfigError, match="fc"):
        FeatureTap(model, ["fc"])
