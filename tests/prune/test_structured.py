"""StructuredPruning through st.prune: targets, scopes, importance criteria, rounding, limits, errors."""

import copy
import warnings

import pytest
import torch
from torch import nn

import slimtorch as st
from slimtorch.measure.flops import count_flops
from slimtorch.prune.channel_scores import choose_channels, dim_scores, keep_count, slimming_regularizer, to_channels
from slimtorch.zoo.models import DigitsCNN, DigitsMLP

X = torch.randn(1, 1, 16, 16)


def n_params(m):
    return sum(p.numel() for p in m.parameters())


def test_pure_scores():
    w = torch.tensor([[1.0, -2.0], [0.0, 3.0], [-1.0, 0.0]])
    assert dim_scores(w, 0).tolist() == [3.0, 3.0, 1.0]
    assert dim_scores(w, 1, "l2").tolist() == [2.0, 13.0]
    from fractions import Fraction

    label = ((0, 0, 2, Fraction(2)),)  # two channels, two entries each (a flatten)
    assert to_channels(torch.tensor([1.0, 2.0, 3.0, 4.0]), label, 0, 2).tolist() == [3.0, 7.0]
    assert keep_count(64, 0.5, step=8, max_ratio=0.9) == 32
    assert keep_count(10, 0.99, step=1, max_ratio=0.9) == 1
    assert keep_count(60, 0.5, step=8, max_ratio=0.9) == 32
    scores = torch.tensor([5.0, 1, 1, 4, 0, 0, 9, 9])
    assert choose_channels(scores, 4, block=2).tolist() == [0, 1, 6, 7]
    assert choose_channels(scores, 4, groups=2).tolist() == [0, 3, 6, 7]


@pytest.mark.parametrize("target", ["params", "flops"])
@pytest.mark.parametrize("scope", ["uniform", "global"])
def test_param_and_flop_targets_are_met(target, scope):
    model = DigitsCNN()
    measure = n_params if target == "params" else (lambda m: count_flops(m, X))
    before = measure(model)
    st.prune(model, st.StructuredPruning(ratio=0.5, target=target, scope=scope), example_inputs=X)
    assert 0.44 <= measure(model) / before <= 0.5
    assert model(X).shape == (1, 10)


def test_channel_ratio_with_round_to_and_max_layer_ratio():
    model = DigitsCNN()
    st.prune(model, st.StructuredPruning(ratio=0.5, round_to=8), example_inputs=X)
    assert [model.layer1.conv1.out_channels, model.layer2.conv1.out_channels, model.layer3.conv1.out_channels] == [
        16, 32, 64]
    assert all(c.out_channels % 8 == 0 for c in model.modules() if isinstance(c, nn.Conv2d))
    model = DigitsCNN()
    st.prune(model, st.StructuredPruning(ratio=0.95, max_layer_ratio=0.75), example_inputs=X)
    assert model.layer3.conv1.out_channels == 32  # at most 75% of 128 removed


def test_global_scope_prunes_unevenly_by_importance():
    model = DigitsMLP(hidden=64)
    with torch.no_grad():
        model.fc1.weight[16:] *= 0.01  # 48 of fc1's 64 neurons are nearly dead; fc2's are alike
        model.fc1.bias[16:] *= 0.01
        model.head.weight[:, :] = 0.01
    st.prune(model, st.StructuredPruning(ratio=0.5, scope="global"), example_inputs=torch.randn(1, 64))
    assert model.fc1.out_features < 20 and model.fc2.out_features > 40


def test_ignore_and_select_restrict_the_layers():
    model = DigitsCNN()
    st.prune(model, st.StructuredPruning(ratio=0.5, ignore=("layer1.conv1",)), example_inputs=X)
    assert model.layer1.conv1.out_channels == 32 and model.layer2.conv1.out_channels == 32
    model = DigitsCNN()
    st.prune(model, st.StructuredPruning(ratio=0.5), example_inputs=X, select=["layer3.*"])
    assert model.layer3.conv1.out_channels == 64 and model.layer2.conv1.out_channels == 64


@pytest.mark.parametrize("importance", ["l1", "l2", "bn_scale", "taylor", "random"])
def test_importance_criteria_pick_the_expected_channels(importance):
    model = DigitsCNN().eval()
    with torch.no_grad():  # make channels 0..15 of layer1.conv1 clearly the important ones
        model.layer1.conv1.weight[16:] *= 0.01
        model.layer1.bn1.weight[16:] *= 0.01
        model.layer1.bn1.bias[16:] *= 0.01
        model.layer1.conv2.weight[:, 16:] *= 0.01
    data = [(torch.randn(8, 1, 16, 16), torch.randint(0, 10, (8,)))]
    ref = copy.deepcopy(model)
    st.prune(model, st.StructuredPruning(ratio=0.5, importance=importance), example_inputs=X, data=data, seed=3,
             select=["layer1.conv1"])
    kept = model.layer1.conv1.weight
    if importance == "random":
        again = copy.deepcopy(ref)
        st.prune(again, st.StructuredPruning(ratio=0.5, importance="random"), example_inputs=X, seed=3,
                 select=["layer1.conv1"])
        torch.testing.assert_close(again.layer1.conv1.weight, kept)  # same seed, same choice
    else:
        torch.testing.assert_close(kept, ref.layer1.conv1.weight[:16])


def test_iterative_steps_reach_the_ratio():
    model = DigitsCNN()
    before = count_flops(model, X)
    st.prune(model, st.StructuredPruning(ratio=0.5, target="flops", steps=3), example_inputs=X)
    assert 0.44 <= count_flops(model, X) / before <= 0.5


def test_fine_tuning_between_steps_is_a_recipe_stage_now():
    with pytest.raises(st.ConfigError, match=r"'finetune_epochs' was removed; fine-tune in a stage of its own .*"
                                             r"finetune: \{epochs: N\}"):
        st.StructuredPruning(ratio=0.5, finetune_epochs=1)
    assert not st.StructuredPruning(steps=3).requires_data()


def test_slimming_regularizer_shrinks_bn_scales():
    model = DigitsCNN()
    step = slimming_regularizer(0.3)
    with torch.no_grad():
        model.stem[1].weight.copy_(torch.linspace(-1, 1, 32))
    step(model)
    w = model.stem[1].weight
    assert (w[(w.abs() > 0)].abs() <= 0.7 + 1e-6).all() and (w == 0).sum() >= 8


def test_batchnorm_statistics_are_recalibrated_on_data():
    from slimtorch.prune.channel_scores import recalibrate_batchnorm

    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).eval()
    x = torch.randn(16, 3, 8, 8) * 3 + 1
    assert recalibrate_batchnorm(model, [(x, torch.zeros(16))], 4) == 1
    with torch.no_grad():
        act = model[0](x)
    torch.testing.assert_close(model[1].running_mean, act.mean((0, 2, 3)), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(model[1].running_var, act.var((0, 2, 3)), atol=1e-3, rtol=1e-3)
    assert not model.training and model[1].momentum == 0.1


def test_config_errors_name_field_and_allowed_values():
    with pytest.raises(st.ConfigError, match="ratio"):
        st.StructuredPruning(ratio=1.0)
    with pytest.raises(st.ConfigError, match="importance"):
        st.StructuredPruning(importance="l3")
    with pytest.raises(st.ConfigError, match="target"):
        st.StructuredPruning(target="latency")
    with pytest.raises(st.ConfigError, match="round_to"):
        st.StructuredPruning(round_to=0)
    assert st.StructuredPruning.from_dict({"method": "structured", "ratio": 0.3, "ignore": ["head"]}).ignore == (
        "head",)


def test_data_errors():
    with pytest.raises(st.DataError, match="example_inputs"):
        st.prune(DigitsCNN(), st.StructuredPruning())
    with pytest.raises(st.DataError, match="taylor"):
        st.prune(DigitsCNN(), st.StructuredPruning(importance="taylor"), example_inputs=X)


class HardCodedWidth(nn.Module):
    """A forward that recomputes the head width from the residual width (nanoGPT's C // n_head) cannot follow."""

    def __init__(self) -> None:
        super().__init__()
        self.qkv = nn.Linear(16, 48)
        self.proj = nn.Linear(16, 16)
        self.n_head = 4

    def forward(self, x):
        b, t, c = x.shape
        q, k, v = self.qkv(x).split(c, dim=2)
        q, k, v = (z.view(b, t, self.n_head, c // self.n_head).transpose(1, 2) for z in (q, k, v))
        y = torch.nn.functional.scaled_dot_product_attention(q, k, v)
        return self.proj(y.transpose(1, 2).reshape(b, t, c))


def test_a_model_that_cannot_follow_is_restored_with_a_clear_error():
    model, x = HardCodedWidth(), torch.randn(1, 5, 16)
    want = model(x)
    with pytest.raises(st.UnsupportedModelError, match="restored"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        st.prune(model, st.StructuredPruning(ratio=0.5), example_inputs=x)
    torch.testing.assert_close(model(x), want)
    assert model.qkv.out_features == 48


@pytest.mark.slow
def test_zoo_cnn_half_flops_with_finetuning_keeps_accuracy_and_saves(digits_cnn, tmp_path):
    from slimtorch.zoo.models import DigitsCNN as Arch

    teacher, data = digits_cnn
    model = copy.deepcopy(teacher)
    ex = data.example_inputs(1)
    base, flops = data.evaluate(teacher), count_flops(teacher, ex)
    st.prune(model, st.StructuredPruning(ratio=0.5, target="flops", importance="taylor", round_to=8),
             example_inputs=ex, data=data)
    st.finetune(model, data, teacher=teacher, epochs=1)
    assert count_flops(model, ex) <= 0.5 * flops
    assert data.evaluate(model) >= base - 0.01
    loaded = st.load(st.save(model, tmp_path / "cnn"), Arch()).eval()
    torch.testing.assert_close(loaded(ex), model.eval()(ex))
