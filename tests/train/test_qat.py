"""The QuantAwareTraining stage: prepare, train and convert in one step, from Python and from a recipe."""

import copy

import pytest
import torch

import slimtorch as st
from slimtorch.quant.binary.modules import BinaryLinear
from slimtorch.quant.modules import QuantLinear


def test_a_recipe_stage_trains_and_converts_to_static_int8(digits_mlp):
    model, data = digits_mlp
    model = copy.deepcopy(model)
    before = data.evaluate(model)
    recipe = {"stages": [{"quantize": {"method": "qat", "epochs": 1, "max_batches": 8}}]}
    st.compress(model, recipe, data=data)
    layers = [m for m in model.modules() if isinstance(m, QuantLinear)]
    assert layers and all(m.mode == "static" for m in layers) and not model.training
    assert data.evaluate(model) >= before - 0.02  # QAT keeps the trained model's accuracy within 2 points
    stage = model.slimtorch_record.stages[0]
    assert (stage.stage, stage.method) == ("quantize", "qat")


def test_the_verb_takes_other_targets(digits_mlp):
    model, data = digits_mlp
    model = copy.deepcopy(model)
    st.quantize(model, st.QuantAwareTraining(target="ternary", epochs=1, max_batches=2), data=data)
    assert any(isinstance(m, BinaryLinear) for m in model.modules())
    x = data.example_inputs(4)
    with torch.no_grad():
        assert model(x).shape == (4, 10)


def test_refusals_name_the_fix():
    with pytest.raises(st.DataError, match="pass data="):
        st.quantize(torch.nn.Sequential(torch.nn.Linear(4, 4)), st.QuantAwareTraining())
    with pytest.raises(st.ConfigError, match="include is not allowed with a binary target; use exclude"):
        st.QuantAwareTraining(target="binary", include=("0",))
    with pytest.raises(st.ConfigError, match="group_size=None is not allowed with bits=4"):
        st.QuantAwareTraining(target="weight_only", bits=4)
    with pytest.raises(st.ConfigError, match="set them on the target config, WeightOnlyQuant"):
        st.QuantAwareTraining(target=st.WeightOnlyQuant(bits=4, group_size=32), bits=4)
    with pytest.raises(st.ConfigError, match="target=QuantAwareTraining\\(...\\) cannot be trained for"):
        st.QuantAwareTraining(target=st.QuantAwareTraining())
    with pytest.raises(st.ConfigError, match="method='binry' is not a format QAT trains for.*did you mean 'binary'"):
        st.QuantAwareTraining.from_dict({"target": {"method": "binry"}})
    with pytest.raises(st.ConfigError, match="unknown field 'activation' \\(did you mean 'activations'"):
        st.QuantAwareTraining.from_dict({"target": {"method": "binary", "activation": True}})


def test_the_target_can_be_the_formats_own_config_in_python_and_yaml():
    from slimtorch.recipe import recipe_from_dict

    stage = st.QuantAwareTraining(target=st.Binarize(activations=True, exclude=("fc1",)), exclude=("fc3",), epochs=2)
    assert stage.format_config() == st.Binarize(activations=True, exclude=("fc1", "fc3"))
    assert stage.learning_rate() == 1e-3 and st.QuantAwareTraining().learning_rate() == 1e-4
    recipe = recipe_from_dict({"stages": [{"quantize": {"method": "qat", "epochs": 2, "exclude": ["fc3"],
                                                        "target": {"method": "binary", "activations": True,
                                                                   "exclude": ["fc1"]}}}]})
    assert recipe.stages[0] == stage
    assert recipe_from_dict(recipe.to_dict()).stages[0] == stage  # to_dict writes the target as a mapping


def test_a_binary_target_with_options_trains_through_the_ste_and_packs():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(20, 64), torch.nn.ReLU(), torch.nn.Linear(64, 64), torch.nn.ReLU(),
                                torch.nn.Linear(64, 3))
    x = torch.randn(64, 20)
    batches = [(x[i:i + 16], torch.randint(0, 3, (16,))) for i in range(0, 64, 16)]
    latent = model[2].weight.detach().clone()
    stage = st.QuantAwareTraining(target=st.Binarize(activations=True), epochs=1)
    st.quantize(model, stage, data=batches)
    layer = model[2]
    assert isinstance(layer, BinaryLinear) and layer.activations and type(model[0]) is torch.nn.Linear
    # the packed signs come from trained latent weights, not the original ones
    assert not torch.equal(torch.sign(latent).clamp(min=0).bool(), layer.dequantized_weight().gt(0))
