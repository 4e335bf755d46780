"""The verbs' shared behaviour: mixed-precision overrides of ``st.quantize``."""

import pytest
import torch
from torch import nn

import slimtorch as st
from slimtorch.quant.modules import QuantLinear


def _mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4))


def test_overrides_give_layers_their_own_format_or_keep_them_float():
    calib = [torch.randn(8, 16) for _ in range(4)]
    model = st.quantize(_mlp(), st.StaticQuant(calibration_batches=4), data=calib,
                        overrides={"0": None, "4": st.WeightOnlyQuant(bits=8, group_size=None)})
    assert type(model[0]) is nn.Linear  # kept float
    assert isinstance(model[2], QuantLinear) and model[2].mode == "static"
    assert isinstance(model[4], QuantLinear) and model[4].mode == "weight_only" and model[4].bits == 8
    assert model(torch.randn(3, 16)).shape == (3, 4)


def test_override_patterns_accept_regexes():
    model = st.quantize(_mlp(), st.DynamicQuant(), overrides={"re:^[02]$": st.WeightOnlyQuant(bits=4, group_size=16)})
    assert [m.mode for m in model if isinstance(m, QuantLinear)] == ["weight_only", "weight_only", "dynamic"]


def test_override_config_with_its_own_include_is_refused():
    with pytest.raises(st.ConfigError, match="include must be unset"):
        st.quantize(_mlp(), st.DynamicQuant(), overrides={"0": st.DynamicQuant(include=("2",))})


def test_bad_override_changes_nothing():
    model = _mlp()
    with pytest.raises(st.ConfigError, match="quantization config or None"):
        st.quantize(model, st.DynamicQuant(), overrides={"0": st.DynamicQuant(), "2": st.UnstructuredPruning()})
    assert not any(isinstance(m, QuantLinear) for m in model)  # the valid first override was not applied either


def test_moved_names_still_resolve_and_say_where_they_live():
    from slimtorch.lowrank.modules import LowRankLinear
    from slimtorch.prune.nm_linear import use_nm_kernels

    with pytest.warns(DeprecationWarning, match="from slimtorch.lowrank.modules import LowRankLinear"):
        assert st.LowRankLinear is LowRankLinear
    with pytest.warns(DeprecationWarning, match="slimtorch.prune.nm_linear"):
        assert st.use_nm_kernels is use_nm_kernels
    with pytest.raises(AttributeError, match="no attribute 'NoSuchThing'"):
        st.NoSuchThing  # noqa: B018
