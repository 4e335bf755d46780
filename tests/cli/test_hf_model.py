"""A Hugging Face model folder on disk as the CLI's MODEL (built from a tiny random config; no hub access)."""

import pytest

from slimtorch.cli.main import main

transformers = pytest.importorskip("transformers")


def test_measure_a_hugging_face_folder(tmp_path, capsys):
    config = transformers.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=64, num_labels=3)
    transformers.BertForSequenceClassification(config).save_pretrained(tmp_path / "tiny-bert")
    out = tmp_path / "m.json"
    assert main(["--quiet", "measure", str(tmp_path / "tiny-bert"), "--json", str(out)]) == 0
    import json

    metrics = json.loads(out.read_text())
    assert metrics["params"] > 0 and metrics["flops"] > 0 and metrics["accuracy"] is None
