"""N:M pruning: the pattern holds in every group, conv layout, skipped layers, checks and errors."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as hs
from torch import nn

import slimtorch as st
from slimtorch.prune.semistructured import check_nm, nm_mask, nm_violations
from slimtorch.summary import last_summary


@settings(max_examples=40, deadline=None)
@given(hs.integers(1, 8), hs.integers(1, 4), hs.integers(1, 5), hs.integers(0, 10_000))
def test_nm_mask_keeps_exactly_n_of_every_m_and_the_largest(m, groups, rows, seed):
    n = seed % (m + 1)
    scores = torch.rand(rows, groups * m, generator=torch.Generator().manual_seed(seed))
    keep = nm_mask(scores, n, m)
    per_group = keep.reshape(-1, m).sum(1)
    assert torch.all(per_group == n)
    g, k = scores.reshape(-1, m), keep.reshape(-1, m)
    if 0 < n < m:  # every kept score beats every dropped one in its group
        kept_min = torch.where(k, g, torch.inf).min(1).values
        dropped_max = torch.where(~k, g, -torch.inf).max(1).values
        assert torch.all(kept_min >= dropped_max)


@pytest.mark.parametrize(("n", "m"), [(2, 4), (4, 8), (1, 4), (3, 5)])
def test_nm_pattern_holds_on_a_model(n, m):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(40, 40), nn.ReLU(), nn.Linear(40, 80), nn.ReLU(), nn.Linear(80, 3))
    st.prune(model, st.NMPruning(n=n, m=m))
    for layer in (model[0], model[2]):
        assert nm_violations(layer.weight, n, m) == 0
        assert int((layer.weight != 0).sum()) == layer.weight.numel() * n // m
    check_nm(model, n, m, ["0", "2"])
    assert last_summary(model).details["overall"] == pytest.approx(1 - n / m)


def test_conv_groups_run_along_in_times_kernel_and_odd_layers_are_skipped(digits_cnn):
    import copy

    model = copy.deepcopy(digits_cnn[0])
    st.prune(model, st.NMPruning(n=2, m=4), data=digits_cnn[1])  # data: BatchNorm statistics re-estimated
    assert last_summary(model).details["skipped"] == ["stem.0"]  # 1 x 3 x 3 = 9 inputs per filter
    conv = model.layer1.conv1
    assert nm_violations(conv.weight, 2, 4) == 0
    assert (conv.weight.reshape(conv.out_channels, -1).reshape(-1, 4) != 0).sum(1).max() == 2
    acc = digits_cnn[1].evaluate(model)
    assert acc > 0.95  # 2:4 magnitude pruning + BN re-estimation, no fine-tuning: still a working model


def test_check_nm_names_the_layer():
    model = nn.Sequential(nn.Linear(8, 4), nn.Linear(4, 2))
    with pytest.raises(st.ConfigError, match="'0'"):
        check_nm(model, 2, 4, ["0"])


def test_nm_errors():
    with pytest.raises(st.ConfigError, match="larger than m"):
        st.NMPruning(n=5, m=4)
    with pytest.raises(st.ConfigError, match="m="):
        st.NMPruning(n=0, m=0)
    with pytest.raises(st.ConfigError, match="multiple of m=4"):
        st.prune(nn.Sequential(nn.Linear(6, 6), nn.Linear(6, 2)), st.NMPruning())
