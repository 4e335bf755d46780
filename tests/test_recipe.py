import pytest

import slimtorch as st
from slimtorch.recipe import Recipe, builtin_names, load_recipe, recipe_from_dict


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
