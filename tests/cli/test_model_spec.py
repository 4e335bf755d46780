"""Resolving the CLI's MODEL argument (slimtorch.cli.model_spec): spec forms, factories, --weights, zoo names and the
example inputs the CLI builds."""

import json

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from slimtorch.cli.main import main
from slimtorch.cli.model_spec import (
    Resolved,
    check_import_spec,
    check_model_spec,
    example_inputs,
    load_state_file,
    resolve_model,
)
from slimtorch.errors import ConfigError, DataError

SMALL = f"{__name__}:small_net"


def small_net() -> nn.Module:
    """A factory for the CLI: 4 inputs -> 2 outputs."""
    return nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))


def wider_net() -> nn.Module:
    """The same layout as small_net with 5 inputs: its weights do not fit small_net."""
    return nn.Sequential(nn.Linear(5, 3), nn.ReLU(), nn.Linear(3, 2))


def needs_arguments(width: int) -> nn.Module:
    """A factory the CLI cannot call (it calls factories without arguments)."""
    return nn.Linear(width, width)


def trained_state() -> dict[str, torch.Tensor]:
    """Weights of small_net that a fresh small_net() does not have."""
    torch.manual_seed(123)
    return {k: v.clone() for k, v in small_net().state_dict().items()}


@pytest.mark.parametrize("spec", ["pkg.mod:build", "torch.nn:Identity", "m:f"])
def test_import_specs_of_the_right_form_are_returned(spec):
    assert check_import_spec(spec, "model") == spec


@pytest.mark.parametrize("spec", ["pkg.mod", "pkg.mod:", ":build", "pkg..mod:build", "pkg-mod:build",
                                  "pkg/mod.py:build", "pkg.mod:build()", "pkg.mod:a.b"])
def test_import_specs_of_another_form_name_the_form_expected(spec):
    with pytest.raises(ConfigError, match=r"model '.*' must look like 'package\.module:function'"):
        check_import_spec(spec, "model")


def test_model_spec_forms(tmp_path):
    assert check_model_spec("zoo:digits-mlp") == "zoo:digits-mlp"
    assert check_model_spec(SMALL) == SMALL
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text("{}")
    assert check_model_spec(str(hf)) == str(hf)  # only the form is checked: nothing is loaded
    with pytest.raises(ConfigError, match=r"no zoo model 'digits-cn' \(did you mean 'digits-cnn'\?\); the zoo has"):
        check_model_spec("zoo:digits-cn")
    with pytest.raises(ConfigError, match="has no config.json, so it is not a Hugging Face model folder"):
        check_model_spec(str(tmp_path))
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"x")
    with pytest.raises(ConfigError, match="is a file: use zoo:NAME, .* and give a state dict with --weights"):
        check_model_spec(str(weights))
    with pytest.raises(ConfigError, match="'no-such-thing' is not understood .*use zoo:NAME, package.module:factory"):
        check_model_spec("no-such-thing")


def test_a_factory_spec_builds_its_model_in_eval_mode():
    resolved = resolve_model(SMALL)
    assert isinstance(resolved, Resolved)
    assert [type(m) for m in resolved.model] == [nn.Linear, nn.ReLU, nn.Linear]
    assert not resolved.model.training
    assert resolved.name == "small_net"
    assert resolved.data is None and resolved.example_inputs is None
    fresh = resolved.build()  # the factory itself: a new model each call
    assert fresh is not resolved.model and type(fresh) is type(resolved.model)


def test_safetensors_weights_are_loaded_into_the_factory_model(tmp_path):
    state = trained_state()
    path = tmp_path / "w.safetensors"
    save_file(state, str(path))
    loaded = resolve_model(SMALL, path).model.state_dict()
    assert loaded.keys() == state.keys()
    for key, value in state.items():
        assert torch.equal(loaded[key], value), key
    assert not torch.equal(resolve_model(SMALL).model.state_dict()["0.weight"], state["0.weight"])


def test_weights_only_torch_files_are_loaded_too(tmp_path):
    state = trained_state()
    path = tmp_path / "w.pt"
    torch.save(state, path)
    assert torch.equal(resolve_model(SMALL, str(path)).model[2].bias, state["2.bias"])


def test_load_state_file_refuses_what_is_not_a_state_dict(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_state_file(tmp_path / "missing.safetensors")
    pickled = tmp_path / "model.pt"
    torch.save(small_net(), pickled)  # a whole pickled module: never unpickled
    with pytest.raises(DataError, match="(?s)not a weights-only torch file .*a state_dict .*or use safetensors"):
        load_state_file(pickled)
    a_list = tmp_path / "list.pt"
    torch.save([torch.zeros(2)], a_list)
    with pytest.raises(DataError, match="does not hold a state dict"):
        load_state_file(a_list)


@pytest.mark.parametrize("make_state", [lambda: wider_net().state_dict(),
                                        lambda: {k: v for k, v in small_net().state_dict().items() if k != "2.bias"}],
                         ids=["shape-mismatch", "missing-key"])
def test_weights_that_do_not_fit_are_refused_with_exit_code_2(tmp_path, make_state, capsys):
    path = tmp_path / "w.safetensors"
    save_file(make_state(), str(path))
    with pytest.raises(DataError, match=f"weights {path} do not fit {SMALL}"):
        resolve_model(SMALL, path)
    out = tmp_path / "m.json"
    assert main(["--quiet", "measure", SMALL, "--weights", str(path), "--input-shape", "1,4", "--json", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("slimtorch measure: error: weights ") and "do not fit" in err
    assert "Traceback" not in err and err.count("\n") == 1
    assert not out.exists()


def test_a_weights_mismatch_names_the_key_that_does_not_fit(tmp_path):
    path = tmp_path / "w.safetensors"
    save_file(wider_net().state_dict(), str(path))
    with pytest.raises(DataError, match=r"0\.weight"):
        resolve_model(SMALL, path)


def test_a_corrupt_safetensors_file_is_a_clear_exit_2(tmp_path, capsys):
    path = tmp_path / "w.safetensors"
    path.write_bytes(b"not a safetensors file")
    assert main(["--quiet", "measure", SMALL, "--weights", str(path), "--input-shape", "1,4"]) == 2
    assert "w.safetensors" in capsys.readouterr().err


def test_a_pickled_model_file_is_a_one_line_exit_2(tmp_path, capsys):
    path = tmp_path / "model.pt"
    torch.save(small_net(), path)
    assert main(["--quiet", "measure", SMALL, "--weights", str(path), "--input-shape", "1,4"]) == 2
    err = capsys.readouterr().err
    assert "is not a weights-only torch file" in err and err.count("\n") == 1


def test_a_factory_that_cannot_be_called_without_arguments_is_a_clear_exit_2(capsys):
    assert main(["--quiet", "measure", f"{__name__}:needs_arguments", "--input-shape", "1,4"]) == 2
    assert "needs_arguments" in capsys.readouterr().err


def test_weights_are_refused_for_models_that_bring_their_own(tmp_path):
    path = tmp_path / "w.safetensors"
    save_file(trained_state(), str(path))
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text(json.dumps({"model_type": "bert"}))
    for spec in ("zoo:digits-mlp", str(hf)):
        with pytest.raises(ConfigError, match="--weights applies to a package.module:factory model; .* brings its own"):
            resolve_model(spec, path)


def test_a_zoo_spec_resolves_to_the_trained_model_and_its_data(digits_mlp):
    model, data = digits_mlp
    resolved = resolve_model("zoo:digits-mlp")
    assert resolved.name == "digits-mlp" and resolved.data is not None
    assert resolved.model.state_dict().keys() == model.state_dict().keys()
    for key, value in model.state_dict().items():
        assert torch.equal(resolved.model.state_dict()[key], value), key
    assert resolved.example_inputs.shape == data.example_inputs(1).shape
    assert type(resolved.build()) is type(model)


def test_example_inputs_prefer_the_shape_then_the_data_then_the_spec(digits_mlp):
    _, data = digits_mlp
    zoo = Resolved(nn.Identity(), nn.Identity, data=data)
    assert example_inputs(zoo, (2, 5), 8, "zoo:digits-mlp").shape == (2, 5)
    assert example_inputs(zoo, None, 8, "zoo:digits-mlp").shape == data.example_inputs(8).shape
    assert example_inputs(zoo, None, None, "zoo:digits-mlp").shape == data.example_inputs(1).shape
    carried = {"input_ids": torch.ones(1, 3, dtype=torch.long)}
    assert example_inputs(Resolved(nn.Identity(), nn.Identity, example_inputs=carried), None, None, "hf") is carried
    with pytest.raises(ConfigError, match=r"pkg.mod:build needs --input-shape \(e\.g\. --input-shape 1,3,224,224\)"):
        example_inputs(Resolved(nn.Identity(), nn.Identity), None, 4, "pkg.mod:build")
