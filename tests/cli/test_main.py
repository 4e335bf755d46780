import json
import subprocess
import sys

import pytest
from torch import nn

from slimtorch import __version__
from slimtorch.cli.main import main


def test_version_and_help(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0 and __version__ in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "measure" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["measure", "zoo:nope"], "no zoo model 'nope'"),
        (["measure", "not-a-spec"], "is not understood"),
        (["measure", "nosuchmodule_xyz:build", "--input-shape", "1,4"], "cannot import module"),
        (["measure", "torch.nn:Nope", "--input-shape", "1,4"], "has no attribute 'Nope'"),
        (["measure", "collections:OrderedDict", "--input-shape", "1,4"], "not an nn.Module"),
        (["measure", "torch.nn:Identity", "--input-shape", "a,b"], "argument --input-shape: 'a,b': 'a' is not a "
                                                                   "positive integer"),
        (["measure", "torch.nn:Identity", "--input-shape", "1,3,x"], "argument --input-shape: '1,3,x' has an empty "
                                                                     "part (number 3)"),
        (["measure", "torch.nn:Identity", "--input-shape", "1,-3"], "'-3' is not a positive integer"),
        (["measure", "torch.nn:Identity", "--weights", "/no/such.pt", "--input-shape", "1,4"],
         "argument --weights: /no/such.pt does not exist"),
        (["measure", "zoo:digits-mlp", "--batch-size", "0"], "argument --batch-size: '0' is out of range"),
        (["measure", "zoo:digits-mlp", "--batch-size", "2.5"], "argument --batch-size: '2.5' is not an integer"),
        (["measure", "zoo:digits-mlpp"], "argument model: no zoo model 'digits-mlpp' (did you mean 'digits-mlp'?)"),
        (["measure", "pkg/mod.py:build"], "must look like 'package.module:function'"),
        (["measure", "zoo:digits-mlp", "--weights", __file__], "--weights applies to a package.module:factory"),
        (["compress", "zoo:digits-mlp", "--recipe", "builtin:demoo", "-o", "out"],
         "argument --recipe: no built-in recipe 'demoo' (did you mean 'demo'?); built-in recipes are ["),
        (["compress", "zoo:digits-mlp", "--recipe", "builtin:demo", "-o", __file__], "argument -o/--out: "),
        (["compress", "zoo:digits-mlp", "--recipe", "builtin:demo", "-o", "out", "--data", "zoo:nope"],
         "argument --data: no zoo data set 'nope'"),
        (["compress", "zoo:digits-mlp", "--recipe", "builtin:demo", "-o", "out", "--seed", "-1"],
         "argument --seed: '-1' is out of range"),
        (["compress", "zoo:digits-mlp", "--recipe", "builtin:demo", "-o", "out", "--image-size", "0"],
         "argument --image-size: '0' is out of range"),
        (["export", "zoo:digits-mlp", "-o", "m.onnx", "--artifact", "/no/such"],
         "argument --artifact: no saved model at /no/such.safetensors"),
        (["demo", "--model", "torch.nn:Identity"], "argument --model: 'torch.nn:Identity' is not a zoo model"),
        (["demo", "--batch-size", "-4"], "argument --batch-size: '-4' is out of range"),
        (["measure"], "the following arguments are required: model"),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and err.count("\n") == 1


def test_wrong_option_exits_2():
    proc = subprocess.run([sys.executable, "-m", "slimtorch.cli.main", "measure"], capture_output=True, text=True)
    assert proc.returncode == 2 and "see 'slimtorch measure --help' for usage" in proc.stderr
    assert proc.stderr.count("\n") == 1


def test_measure_a_zoo_model_writes_json(tmp_path, digits_mlp, capsys):
    out = tmp_path / "m.json"
    assert main(["--quiet", "measure", "zoo:digits-mlp", "--json", str(out)]) == 0
    metrics = json.loads(out.read_text())
    assert metrics["params"] == 64 * 1024 + 1024 + 1024 * 1024 + 1024 + 1024 * 10 + 10
    assert metrics["accuracy"] > 0.95


def lazy_mlp() -> nn.Module:
    """A factory for the CLI: lazy layers learn their input width from the first forward."""
    return nn.Sequential(nn.Flatten(), nn.LazyLinear(8), nn.ReLU(), nn.LazyLinear(2))


def test_measure_and_export_materialise_lazy_modules(tmp_path, capsys):
    out = tmp_path / "m.json"
    assert main(["--quiet", "measure", f"{__name__}:lazy_mlp", "--input-shape", "2,3,4", "--json", str(out)]) == 0
    assert json.loads(out.read_text())["params"] == 12 * 8 + 8 + 8 * 2 + 2
    onnx_path = tmp_path / "m.onnx"
    assert main(["--quiet", "export", f"{__name__}:lazy_mlp", "--input-shape", "2,3,4", "-o", str(onnx_path)]) == 0
    assert onnx_path.is_file() and "agree" in capsys.readouterr().out
