import json
import subprocess
import sys

import pytest

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
        (["measure", "torch.nn:Identity", "--input-shape", "a,b"], "comma-separated integers"),
        (["measure", "torch.nn:Identity", "--weights", "/no/such.pt", "--input-shape", "1,4"], "does not exist"),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and err.count("\n") == 1


def test_wrong_option_exits_2():
    proc = subprocess.run([sys.executable, "-m", "slimtorch.cli.main", "measure"], capture_output=True, text=True)
    assert proc.returncode == 2 and "usage" in proc.stderr


def test_measure_a_zoo_model_writes_json(tmp_path, digits_mlp, capsys):
    out = tmp_path / "m.json"
    assert main(["--quiet", "measure", "zoo:digits-mlp", "--json", str(out)]) == 0
    metrics = json.loads(out.read_text())
    assert metrics["params"] == 64 * 1024 + 1024 + 1024 * 1024 + 1024 + 1024 * 10 + 10
    assert metrics["accuracy"] > 0.95
