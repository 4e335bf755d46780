from importlib import resources

import pytest
import torch
import yaml

import slimtorch as st
from slimtorch.recipe import Recipe, as_recipe, builtin_names, load_recipe, recipe_from_dict


def test_python_configs_write_and_read_back_identically(tmp_path):
    recipe = Recipe(stages=(st.Finetune(epochs=2, lr=5e-4), st.Finetune(distill=False)), export=("safetensors",))
    path = tmp_path / "r.yaml"
    path.write_text(recipe.to_yaml())
    assert load_recipe(path) == recipe


@pytest.mark.parametrize(
    "values, message",
    [
        ({"stages": [{"pruune": {}}]}, "stage 1: unknown stage 'pruune'.*did you mean 'prune'"),
        ({"stages": [{"finetune": {"epochs": "two"}}]}, r"stage 1 \(finetune.finetune\): Finetune.epochs='two'"),
        ({"stages": [{"finetune": {"epochs": 1}}, {"finetune": {"alpha": 2.0}}]},
         r"stage 2 .*alpha=2.0 is out of range; allowed: a number in \[0, 1\]"),
        ({"stages": [{"finetune": {"epoch": 1}}]}, "unknown field 'epoch'.*did you mean 'epochs'"),
        ({"stages": [{"finetune": {"method": "nope"}}]}, "method='nope' is not allowed"),
        ({"stages": []}, "'stages' must be a non-empty list"),
        ({"stages": [{"finetune": {}}], "export": ["tflite"]}, "export 'tflite' is not allowed"),
        ({"stage": []}, "unknown key 'stage'.*did you mean 'stages'"),
        ({"stages": ["finetune"]}, "one-key mapping"),
    ],
)
def test_bad_recipes_name_stage_field_value(values, message):
    with pytest.raises(st.ConfigError, match=message):
        recipe_from_dict(values)


def test_invalid_yaml_and_missing_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("stages: [unclosed")
    with pytest.raises(st.ConfigError, match="invalid YAML"):
        load_recipe(bad)
    with pytest.raises(st.ConfigError, match="does not exist"):
        load_recipe(tmp_path / "missing.yaml")
    with pytest.raises(st.ConfigError, match="no built-in recipe"):
        load_recipe("builtin:nope")


def test_every_builtin_recipe_validates():
    assert builtin_names()
    for name in builtin_names():
        recipe = load_recipe(f"builtin:{name}")
        assert recipe.stages and recipe.description


@pytest.mark.parametrize("name", builtin_names())
def test_a_recipe_as_a_dict_is_the_same_recipe_as_its_yaml(name):
    values = yaml.safe_load((resources.files("slimtorch") / "recipes" / f"{name}.yaml").read_text())
    assert as_recipe(values) == load_recipe(f"builtin:{name}")
    assert as_recipe(load_recipe(f"builtin:{name}")) == load_recipe(f"builtin:{name}")


def test_compress_takes_a_dict_recipe_and_names_the_close_match_of_a_typo():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    recipe = {"stages": [{"prune": {"method": "unstructured", "sparsity": 0.5}}]}
    st.compress(model, recipe, example_inputs=torch.randn(4, 16))
    assert float((model[0].weight == 0).float().mean()) == pytest.approx(0.5, abs=0.01)
    with pytest.raises(st.ConfigError, match="unknown key 'stagse'.*did you mean 'stages'"):
        st.compress(model, {"stagse": recipe["stages"]}, example_inputs=torch.randn(4, 16))
    with pytest.raises(st.ConfigError, match="unknown field 'sparsty'.*did you mean 'sparsity'"):
        st.compress(model, {"stages": [{"prune": {"method": "unstructured", "sparsty": 0.5}}]},
                    example_inputs=torch.randn(4, 16))
    with pytest.raises(st.ConfigError, match="export 'onx' is not allowed.*did you mean 'onnx'"):
        st.compress(model, st.Recipe(stages=(st.UnstructuredPruning(),), export=("onx",)),
                    example_inputs=torch.randn(4, 16))
    with pytest.raises(st.ConfigError, match="got int"):
        st.compress(model, 3, example_inputs=torch.randn(4, 16))
