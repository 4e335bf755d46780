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
    with pytest.raises(st.ConfigError, match="include is not allowed with target='binary'"):
        st.QuantAwareTraining(target="binary", include=("0",))
    with pytest.raises(st.ConfigError, match="group_size=None is not allowed with bits=4"):
        st.QuantAwareTraining(target="weight_only", bits=4)
