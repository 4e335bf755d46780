import pytest
import torch
from torch import nn

import slimtorch as st
from slimtorch.recipe import Recipe, load_recipe


def test_config_errors_name_the_field_and_the_allowed_values():
    with pytest.raises(st.ConfigError, match="exactly one of"):
        st.LowRank()
    with pytest.raises(st.ConfigError, match="exactly one of"):
        st.LowRank(rank=4, energy=0.9)
    with pytest.raises(st.ConfigError, match=r"LowRank.energy=1.5 is out of range; allowed: a number in \(0, 1\]"):
        st.LowRank(energy=1.5)
    with pytest.raises(st.ConfigError, match="LowRank.target=1.0 is out of range"):
        st.LowRank(target=1.0)
    with pytest.raises(st.ConfigError, match="method='tuker' is not allowed.*did you mean 'tucker'"):
        st.LowRank(rank=4, method="tuker")
    with pytest.raises(st.ConfigError, match="rank=2.5 must be an integer|rank=2.5 has the wrong type"):
        st.LowRank(rank=2.5)


def test_requires_data_only_when_data_is_used():
    assert not st.LowRank(energy=0.9).requires_data()
    assert not st.LowRank(target=2.0, allocation="uniform").requires_data()
    assert st.LowRank(target=2.0).requires_data()
    assert st.LowRank(rank=8, data_aware=True).requires_data()
    with pytest.raises(st.ConfigError, match=r"'finetune_lr' was removed; fine-tune the factors in a stage"):
        st.LowRank(rank=8, finetune_lr=1e-3)


def test_missing_data_and_unreachable_targets_are_reported():
    model = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10))
    with pytest.raises(st.DataError, match="needs calibration data"):
        st.decompose(model, st.LowRank(rank=4, data_aware=True))
    with pytest.raises(st.ConfigError, match="unreachable"):
        st.decompose(model, st.LowRank(target=50.0, allocation="uniform"))
    with pytest.raises(st.ConfigError, match="unreachable.*target_scope='layers'"):
        st.decompose(model, st.LowRank(target=50.0, allocation="uniform", exclude=("0",)),
                     example_inputs=torch.randn(2, 64))


def test_recipe_round_trip_passes_method_through(tmp_path):
    recipe = Recipe(stages=(st.LowRank(energy=0.9, method="tucker", exclude=("head",)), st.Finetune(epochs=1)))
    path = tmp_path / "r.yaml"
    path.write_text(recipe.to_yaml())
    assert "method: tucker" in path.read_text()
    assert load_recipe(path) == recipe
    path.write_text("stages:\n  - decompose: {method: spatial_svd, rank_ratio: 0.5}\n")
    (stage,) = load_recipe(path).stages
    assert stage == st.LowRank(method="spatial_svd", rank_ratio=0.5)
    path.write_text("stages:\n  - decompose: {method: cp, rank: 4}\n")
    with pytest.raises(st.ConfigError, match=r"stage 1 \(decompose\): LowRank.method='cp' is not allowed"):
        load_recipe(path)
