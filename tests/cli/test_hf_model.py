"""A Hugging Face model folder on disk as the CLI's MODEL (built from a tiny random config; no hub access)."""

import json

import pytest
import torch

from slimtorch.cli.main import main
from slimtorch.cli.model_spec import resolve_model

transformers = pytest.importorskip("transformers")

BERT = {"vocab_size": 100, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
        "intermediate_size": 64}


def test_measure_a_hugging_face_folder(tmp_path, capsys):
    config = transformers.BertConfig(**BERT, num_labels=3)
    transformers.BertForSequenceClassification(config).save_pretrained(tmp_path / "tiny-bert")
    out = tmp_path / "m.json"
    capsys.readouterr()  # save_pretrained's own progress output
    assert main(["--quiet", "measure", str(tmp_path / "tiny-bert"), "--json", str(out)]) == 0
    metrics = json.loads(out.read_text())
    assert metrics["params"] > 0 and metrics["flops"] > 0 and metrics["accuracy"] is None
    assert "initialised at random" not in capsys.readouterr().err


@pytest.mark.parametrize("build", [
    lambda: transformers.BertModel(transformers.BertConfig(**BERT)),
    lambda: transformers.BertForMaskedLM(transformers.BertConfig(**BERT)),
    lambda: transformers.GPT2LMHeadModel(transformers.GPT2Config(vocab_size=100, n_positions=32, n_embd=32, n_layer=2,
                                                                 n_head=4)),
], ids=["BertModel", "BertForMaskedLM", "GPT2LMHeadModel"])
def test_the_folder_builds_the_class_its_config_names_with_its_weights(tmp_path, build, capsys):
    torch.manual_seed(0)
    original = build().eval()
    original.save_pretrained(tmp_path / "m")
    capsys.readouterr()  # save_pretrained's own progress output
    resolved = resolve_model(str(tmp_path / "m"))
    assert type(resolved.model) is type(original)
    saved, loaded = original.state_dict(), resolved.model.state_dict()
    assert saved.keys() == loaded.keys() and all(torch.equal(saved[k], loaded[k]) for k in saved)
    assert type(resolved.build()) is type(original)
    with torch.no_grad():
        expected = original(**resolved.example_inputs)[0]
        assert torch.equal(resolved.model(**resolved.example_inputs)[0], expected)
    assert capsys.readouterr().err == ""


def test_a_folder_without_architectures_builds_the_base_model(tmp_path):
    transformers.BertForMaskedLM(transformers.BertConfig(**BERT)).save_pretrained(tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    del config["architectures"]
    (tmp_path / "m" / "config.json").write_text(json.dumps(config))
    assert type(resolve_model(str(tmp_path / "m")).model) is transformers.BertModel


def test_an_architecture_transformers_lacks_is_a_clear_exit_2(tmp_path, capsys):
    transformers.BertModel(transformers.BertConfig(**BERT)).save_pretrained(tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    (tmp_path / "m" / "config.json").write_text(json.dumps({**config, "architectures": ["BertForTimeTravel"]}))
    capsys.readouterr()  # save_pretrained's own progress output
    assert main(["measure", str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err
    assert "names architecture 'BertForTimeTravel', which transformers" in err and err.count("\n") == 1


def test_weights_missing_from_the_folder_are_named_in_one_line(tmp_path, capsys):
    transformers.BertForMaskedLM(transformers.BertConfig(**BERT)).save_pretrained(tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    config.update(architectures=["BertForSequenceClassification"], num_labels=2)
    (tmp_path / "m" / "config.json").write_text(json.dumps(config))
    capsys.readouterr()  # save_pretrained's own progress output
    resolved = resolve_model(str(tmp_path / "m"))
    assert type(resolved.model) is transformers.BertForSequenceClassification
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "initialised at random" in err
    assert "classifier.weight" in err and "classifier.bias" in err and "bert.pooler.dense.weight" in err
