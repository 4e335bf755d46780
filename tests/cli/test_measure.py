"""``slimtorch measure MODEL`` (slimtorch.cli.measure): the printed metrics, the --json file, --weights, --batch-size
and the errors that stop it before anything is written."""

import dataclasses
import json

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from slimtorch.cli.main import main
from slimtorch.measure.metrics import Metrics

SMALL = f"{__name__}:small_net"
SMALL_PARAMS = 4 * 3 + 3 + 3 * 2 + 2


def small_net() -> nn.Module:
    """A factory for the CLI: 4 inputs -> 2 outputs, 23 parameters."""
    return nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))


def printed_metrics(out: str) -> dict[str, str]:
    """The ``key: value`` lines measure prints, as text."""
    lines = [line.strip().split(": ", 1) for line in out.splitlines() if ": " in line]
    return {key: value for key, value in lines}


def test_prints_every_metric_and_writes_the_same_as_json(tmp_path, capsys):
    out = tmp_path / "new" / "deeper" / "m.json"  # missing folders are created
    assert main(["--quiet", "measure", SMALL, "--input-shape", "3,4", "--json", str(out)]) == 0
    printed = printed_metrics(capsys.readouterr().out)
    assert list(printed) == [f.name for f in dataclasses.fields(Metrics)]
    metrics = json.loads(out.read_text())
    assert list(metrics) == list(printed)
    assert metrics["params"] == SMALL_PARAMS == sum(p.numel() for p in small_net().parameters())
    assert metrics["nonzero_params"] <= SMALL_PARAMS
    assert metrics["macs"] == 3 * (4 * 3 + 3 * 2)  # batch 3 through two Linear layers
    assert metrics["flops"] == 2 * metrics["macs"]
    assert metrics["batch_size"] == 3 and metrics["accuracy"] is None
    assert metrics["label"] == "small_net" and metrics["runtime"] == "torch"
    assert metrics["size_bytes"] > 0 and metrics["latency_ms"] > 0
    for key in ("params", "nonzero_params", "size_bytes", "flops", "macs", "batch_size", "threads",
                "peak_memory_bytes"):
        assert printed[key] == str(metrics[key]), key
    assert printed["accuracy"] == "None"
    assert Metrics.from_dict(metrics).params == SMALL_PARAMS


def test_without_json_only_prints(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["--quiet", "measure", SMALL, "--input-shape", "1,4"]) == 0
    assert printed_metrics(capsys.readouterr().out)["params"] == str(SMALL_PARAMS)
    assert not any(tmp_path.iterdir())


def test_weights_are_the_ones_measured(tmp_path, capsys):
    state = small_net().state_dict()
    state["0.weight"] = torch.zeros_like(state["0.weight"])  # 12 zero weights
    path = tmp_path / "w.safetensors"
    save_file(state, str(path))
    out = tmp_path / "m.json"
    assert main(["--quiet", "measure", SMALL, "--weights", str(path), "--input-shape", "1,4", "--json", str(out)]) == 0
    metrics = json.loads(out.read_text())
    assert metrics["params"] == SMALL_PARAMS
    assert metrics["nonzero_params"] == SMALL_PARAMS - 12


def test_a_zoo_model_uses_its_data_and_the_batch_size(tmp_path, digits_mlp, capsys):
    model, _ = digits_mlp
    out = tmp_path / "m.json"
    assert main(["--quiet", "measure", "zoo:digits-mlp", "--batch-size", "4", "--json", str(out)]) == 0
    metrics = json.loads(out.read_text())
    assert metrics["params"] == sum(p.numel() for p in model.parameters())
    assert metrics["batch_size"] == 4 and metrics["label"] == "digits-mlp"
    assert 0.0 <= metrics["accuracy"] <= 1.0
    assert printed_metrics(capsys.readouterr().out)["accuracy"] == str(metrics["accuracy"])


@pytest.mark.parametrize(
    "extra, message",
    [
        ([], f"slimtorch measure: error: {SMALL} needs --input-shape (e.g. --input-shape 1,3,224,224)"),
        (["--input-shape", "2,7"], "slimtorch measure: error: the model failed on the example inputs (RuntimeError"),
    ],
)
def test_errors_after_parsing_are_one_line_and_write_nothing(tmp_path, extra, message, capsys):
    out = tmp_path / "m.json"
    assert main(["--quiet", "measure", SMALL, "--json", str(out), *extra]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith(message) and captured.err.count("\n") == 1
    assert "Traceback" not in captured.err and captured.out == ""
    assert not out.exists()


def test_json_into_a_folder_or_under_a_file_is_refused(tmp_path, capsys):
    assert main(["measure", SMALL, "--input-shape", "1,4", "--json", str(tmp_path)]) == 2
    assert f"argument --json: {tmp_path} is a folder; give a file name" in capsys.readouterr().err
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["measure", SMALL, "--input-shape", "1,4", "--json", str(blocker / "m.json")]) == 2
    assert "argument --json: cannot write" in capsys.readouterr().err
