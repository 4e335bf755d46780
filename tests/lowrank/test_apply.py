import copy

import pytest
import torch
from torch import nn

import slimtorch as st
from slimtorch.lowrank.modules import LowRankConv2d, LowRankLinear
from slimtorch.measure.size import count_params
from slimtorch.recipe import Recipe
from slimtorch.summary import last_summary


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10)).eval()


def _decomposed(model: nn.Module) -> dict[str, dict]:
    return {r["name"]: r for r in last_summary(model).details["layers"]}


def test_fixed_rank_ratio_and_head_kept():
    model = _mlp()
    st.decompose(model, st.LowRank(rank_ratio=0.25))
    rows = _decomposed(model)
    assert isinstance(model[0], LowRankLinear) and model[0].rank == 16  # min(256, 64) * 0.25
    assert model[2].rank == 64 and isinstance(model[4], nn.Linear)
    assert rows["4"]["status"] == "left dense" and "head" in rows["4"]["reason"]


def test_a_rank_above_break_even_leaves_the_layer_alone():
    model = _mlp()
    st.decompose(model, st.LowRank(rank=128, keep_head=False))  # 256x256 breaks even at 128
    rows = _decomposed(model)
    assert isinstance(model[2], nn.Linear) and "break-even" in rows["2"]["reason"]
    assert isinstance(model[0], nn.Linear)  # 64x256 breaks even at 51.2
    assert isinstance(model[4], LowRankLinear) is False  # 10x256: full rank 10 is above 9.6


def test_energy_ranks_keep_the_energy_of_each_layer():
    model = _mlp()
    w = model[2].weight.detach().clone()
    st.decompose(model, st.LowRank(energy=0.5))
    s = torch.linalg.svdvals(w.double())
    r = model[2].rank
    kept = float(s[:r].pow(2).sum() / s.pow(2).sum())
    assert kept >= 0.5 and float(s[: r - 1].pow(2).sum() / s.pow(2).sum()) < 0.5


@pytest.mark.parametrize("allocation", ["sensitivity", "energy", "uniform"])
@pytest.mark.parametrize("scope", ["layers", "model"])
def test_targets_respect_the_parameter_budget(digits_mlp, allocation, scope):
    model, data = digits_mlp
    model = copy.deepcopy(model)
    total_before = count_params(model)[0]
    layers_before = model.fc1.weight.numel() + model.fc2.weight.numel()
    st.decompose(model, st.LowRank(target=2.0, target_scope=scope, allocation=allocation, calibration_batches=2),
                 data=data)
    if scope == "model":
        assert count_params(model)[0] <= total_before / 2
    else:
        after = sum(r.get("params_after", r["params_before"]) for r in last_summary(model).details["layers"]
                    if r["name"] in ("fc1", "fc2"))
        assert after <= layers_before / 2
    assert data.evaluate(model) > 0.9


def test_flops_target_is_met_on_a_real_forward(digits_cnn):
    from slimtorch.measure.flops import count_flops

    model, data = digits_cnn
    model = copy.deepcopy(model)
    x = data.example_inputs(8)
    before = count_flops(model, x)
    st.decompose(model, st.LowRank(target=1.5, target_metric="flops", allocation="uniform"), example_inputs=x)
    assert count_flops(model, x) <= before / 1.5


def test_data_aware_factors_lower_the_output_error(digits_mlp):
    model, data = digits_mlp
    x = next(iter(data.calibration))[0]
    errors = {}
    for aware in (False, True):
        m = copy.deepcopy(model)
        st.decompose(m, st.LowRank(rank=32, data_aware=aware, calibration_batches=4), data=data)
        with torch.no_grad():
            errors[aware] = float((m(x) - model(x)).pow(2).mean())
    assert errors[True] < errors[False]


def test_decompose_twice_does_not_factorize_the_factors():
    model = _mlp()
    st.decompose(model, st.LowRank(rank_ratio=0.25))
    st.decompose(model, st.LowRank(rank_ratio=0.25))
    assert isinstance(model[2].first, nn.Linear) and model[2].rank == 64


def test_batchnorm_statistics_are_not_touched_by_calibration(digits_cnn):
    model, data = digits_cnn
    model = copy.deepcopy(model).train()
    mean = model.stem[1].running_mean.clone()
    st.decompose(model, st.LowRank(target=1.3, data_aware=True, calibration_batches=1), data=data)
    assert model.training and torch.equal(model.stem[1].running_mean, mean)


@pytest.mark.slow
def test_half_the_parameters_with_finetuning_stays_within_one_point(digits_cnn):
    model, data = digits_cnn
    base = data.evaluate(model)
    model = copy.deepcopy(model)
    teacher = copy.deepcopy(model)
    st.decompose(model, st.LowRank(target=2.0, target_scope="layers", allocation="uniform"), data=data)
    st.finetune(model, data, teacher=teacher, epochs=2)
    assert sum(r["status"] == "decomposed" for r in last_summary(model).details["layers"]) >= 8
    assert data.evaluate(model) >= base - 0.01


def test_compress_runs_a_decompose_then_finetune_recipe(digits_mlp):
    model, data = digits_mlp
    model = copy.deepcopy(model)
    recipe = Recipe(stages=(st.LowRank(rank_ratio=0.125, method="svd"), st.Finetune(epochs=1, max_batches=5)))
    st.compress(model, recipe, data=data, eval_fn=data.evaluate)
    assert isinstance(model.fc2, LowRankLinear) and model.fc2.rank == 128
    assert data.evaluate(model) > 0.95


def test_select_restricts_the_layers_and_method_svd_applies_to_convolutions():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1),
                          nn.Flatten(), nn.Linear(32 * 4 * 4, 10)).eval()
    st.decompose(model, st.LowRank(rank=8, method="svd"), select=["2"])
    assert isinstance(model[0], nn.Conv2d) and isinstance(model[2], LowRankConv2d)
    assert model[2].first.kernel_size == (3, 3) and model[2].second.kernel_size == (1, 1)
    with pytest.raises(st.ConfigError, match="matched no layer"):
        st.decompose(model, st.LowRank(rank=8), select=["nope*"])
