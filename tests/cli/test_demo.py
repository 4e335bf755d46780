"""``slimtorch demo`` (slimtorch.cli.demo): its defaults, its argument checks, and one quick run on the zoo MLP with a
one-stage recipe (the default demo, the CNN with the built-in recipe, takes half a minute)."""

import json
from pathlib import Path

import pytest

from slimtorch.cli import demo
from slimtorch.cli.main import build_parser, main

FINETUNE_ONLY = "stages:\n  - finetune: {epochs: 1, lr: 0.0001, max_batches: 2}\nexport: [safetensors]\n"


def test_defaults_are_the_zoo_cnn_and_the_builtin_demo_recipe():
    args = build_parser().parse_args(["demo"])
    assert args.run is demo.run
    assert args.out == Path(demo.DEFAULT_OUT) == Path("slimtorch-demo")
    assert args.model == "zoo:digits-cnn" and args.batch_size == 32
    assert args.recipe.name == "demo"  # read and validated by the parser
    assert [(s.stage, s.method) for s in args.recipe.stages] == [("prune", "structured"), ("finetune", "finetune"),
                                                                ("quantize", "static")]


def test_options_are_parsed(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(FINETUNE_ONLY)
    args = build_parser().parse_args(["demo", "-o", str(tmp_path / "out"), "--model", "zoo:digits-mlp",
                                      "--recipe", str(recipe), "--batch-size", "4"])
    assert args.out == tmp_path / "out" and args.model == "zoo:digits-mlp" and args.batch_size == 4
    assert [s.stage for s in args.recipe.stages] == ["finetune"]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--model", "zoo:digits-cnm"], "argument --model: no zoo model 'digits-cnm' (did you mean 'digits-cnn'?)"),
        (["--recipe", "builtin:dem"], "argument --recipe: no built-in recipe 'dem' (did you mean 'demo'?)"),
        (["--batch-size", "many"], "argument --batch-size: 'many' is not an integer"),
        (["--unknown"], "unrecognized arguments: --unknown"),
    ],
)
def test_bad_arguments_are_one_line_and_exit_2(tmp_path, argv, message, capsys):
    out = tmp_path / "out"
    assert main(["demo", "-o", str(out), *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err
    assert not out.exists()


def test_an_output_that_is_a_file_is_refused(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["demo", "-o", str(blocker)]) == 2
    assert f"argument -o/--out: {blocker} is a file; give a folder" in capsys.readouterr().err
    assert blocker.read_text() == "x"


def test_a_quick_demo_writes_the_reports(tmp_path, digits_mlp, capsys):
    recipe = tmp_path / "quick.yaml"
    recipe.write_text(FINETUNE_ONLY)
    out = tmp_path / "out"
    assert main(["--quiet", "demo", "-o", str(out), "--model", "zoo:digits-mlp", "--recipe", str(recipe),
                 "--batch-size", "4"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("slimtorch demo: zoo:digits-mlp with recipe quick: finetune(finetune)\n")
    assert f"report: {out / 'report.md'}  {out / 'report.html'}  {out / 'report.json'}" in printed
    report = json.loads((out / "report.json").read_text())
    assert [s["stage"] for s in report["stages"]] == ["finetune"]
    assert report["before"]["batch_size"] == report["after"]["batch_size"] == 4
    assert report["before"]["accuracy"] > 0.95
    assert (out / "report.md").read_text().startswith("# slimtorch demo: zoo:digits-mlp\n")
    assert (out / "model.safetensors").is_file() and (out / "report.html").is_file()
