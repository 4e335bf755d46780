import json

import pytest

from slimtorch.cli.main import main

FINETUNE_ONLY = "stages:\n  - finetune: {epochs: 1, lr: 0.0001, max_batches: 2}\nexport: [safetensors]\n"


@pytest.fixture()
def recipe_file(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(FINETUNE_ONLY)
    return path


def test_compress_writes_model_and_reports(tmp_path, recipe_file, digits_mlp, capsys):
    out = tmp_path / "out"
    assert main(["--quiet", "compress", "zoo:digits-mlp", "--recipe", str(recipe_file), "-o", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["before"]["accuracy"] > 0.95 and report["after"]["accuracy"] > 0.9
    assert [s["stage"] for s in report["stages"]] == ["finetune"]
    for name in ("report.md", "report.html", "tradeoff.png", "layers.png", "model.safetensors",
                 "checkpoints/stage-01.safetensors"):
        assert (out / name).is_file(), name
    assert "saved size" in capsys.readouterr().out

    # a second run with --resume finds every stage done and only re-measures
    assert main(["--quiet", "compress", "zoo:digits-mlp", "--recipe", str(recipe_file), "-o", str(out),
                 "--resume"]) == 0
    again = json.loads((out / "report.json").read_text())

    def untimed(stages):  # latencies are re-timed side by side at the end of every run
        return [{**s, "metrics": {k: v for k, v in s["metrics"].items() if not k.startswith("latency")}}
                for s in stages]

    assert untimed(again["stages"]) == untimed(report["stages"])


@pytest.mark.parametrize(
    "recipe, extra, message",
    [
        ("stages:\n  - finetun: {}\n", [], "unknown stage 'finetun'"),
        ("stages:\n  - finetune: {epochs: -1}\n", [], "Finetune.epochs=-1 is out of range"),
        ("stages:\n  - finetune: {epochs: 1}\n", ["--data", "/no/such/folder"], "is not understood"),
    ],
)
def test_bad_recipe_or_data_fails_before_work(tmp_path, recipe, extra, message, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text(recipe)
    out = tmp_path / "out"
    assert main(["compress", "torch.nn:Identity", "--recipe", str(path), "-o", str(out), *extra]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_stage_that_needs_data_without_data(tmp_path, recipe_file, capsys):
    out = tmp_path / "out"
    assert main(["compress", "torch.nn:Identity", "--recipe", str(recipe_file), "-o", str(out)]) == 2
    assert "needs data but none was given" in capsys.readouterr().err
    assert not out.exists()


def test_static_int8_onnx_export_chains_uint8_outputs(tmp_path, digits_cnn):
    import onnx

    recipe = tmp_path / "q.yaml"
    recipe.write_text("stages:\n  - quantize: {method: static, calibration_batches: 2}\nexport: [safetensors, onnx]\n")
    out = tmp_path / "out"
    assert main(["--quiet", "compress", "zoo:digits-cnn", "--recipe", str(recipe), "-o", str(out)]) == 0
    graph = onnx.load(str(out / "model.onnx")).graph
    producers = {o: n.op_type for n in graph.node for o in n.output}
    # with int8_outputs, layer outputs are quantized in the graph (QLinearConv/QGemm chains in ONNX Runtime);
    # without it only layer inputs are (after a Relu, a Reshape or at the graph input)
    quantized = {producers.get(n.input[0]) for n in graph.node if n.op_type == "QuantizeLinear"}
    assert {"Conv", "Gemm"} <= quantized
    assert "onnx" in json.loads((out / "report.json").read_text())["artifacts"]


def test_only_rank_zero_writes_under_torchrun(tmp_path, recipe_file, digits_mlp, monkeypatch):
    monkeypatch.setenv("RANK", "1")  # what torchrun sets on the second process (no process group needed here)
    out = tmp_path / "out"
    assert main(["--quiet", "compress", "zoo:digits-mlp", "--recipe", str(recipe_file), "-o", str(out)]) == 0
    assert not out.exists() or not any(out.rglob("*"))


def test_python_api_writes_the_same_files_as_the_cli(tmp_path, digits_mlp):
    # one code path (slimtorch.pipeline.compress): st.compress honours the recipe's export list and the report
    import copy

    import slimtorch as st

    recipe = ("stages:\n  - prune: {method: unstructured, sparsity: 0.5}\n  - quantize: {method: dynamic}\n"
              "export: [safetensors, onnx]\n")
    (tmp_path / "r.yaml").write_text(recipe)
    cli_out, api_out = tmp_path / "cli", tmp_path / "api"
    assert main(["--quiet", "compress", "zoo:digits-mlp", "--recipe", str(tmp_path / "r.yaml"), "-o",
                 str(cli_out)]) == 0
    model, data = digits_mlp
    model = copy.deepcopy(model)
    st.compress(model, str(tmp_path / "r.yaml"), data=data, example_inputs=data.example_inputs(32),
                eval_fn=data.evaluate, out_dir=api_out)

    def files(root):
        return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())

    assert files(api_out) == files(cli_out)
    assert {"model.safetensors", "model.onnx", "report.html", "checkpoints/stage-02.safetensors"} <= set(files(api_out))
    record = model.slimtorch_record
    assert record.files["onnx"] == str(api_out / "model.onnx") and record.files["html"] == str(api_out / "report.html")
    cli_report, api_report = (json.loads((d / "report.json").read_text()) for d in (cli_out, api_out))
    assert api_report["artifacts"].keys() == cli_report["artifacts"].keys() == {"safetensors", "onnx"}
    assert api_report["after"]["accuracy"] == pytest.approx(cli_report["after"]["accuracy"], abs=1e-9)
    fresh, _ = st.zoo.load("digits-mlp")
    loaded = st.load(api_out / "model.safetensors", model=fresh)
    assert data.evaluate(loaded) == pytest.approx(record.after.accuracy, abs=1e-9)
