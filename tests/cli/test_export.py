"""``slimtorch export``: writes the .onnx, checks agreement, measures both runtimes, loads saved artifacts."""

import copy
import json

import onnx

import slimtorch as st
from slimtorch.cli.main import main


def test_export_zoo_model_with_check_and_measure(tmp_path, capsys, digits_mlp):
    out, report = tmp_path / "mlp.onnx", tmp_path / "r.json"
    assert main(["export", "zoo:digits-mlp", "-o", str(out), "--measure", "--json", str(report)]) == 0
    text = capsys.readouterr().out
    assert "agree" in text and "onnxruntime" in text
    result = json.loads(report.read_text())
    assert result["agreement"]["passed"] and result["agreement"]["kind"] == "float"
    torch_m, ort_m = result["metrics"]["torch"], result["metrics"]["onnxruntime"]
    assert ort_m["runtime"] == "onnxruntime" and ort_m["macs"] == torch_m["macs"]
    assert abs(ort_m["accuracy"] - torch_m["accuracy"]) <= 1 / 359
    assert onnx.load(str(out)).graph.input[0].type.tensor_type.shape.dim[0].dim_param


def test_export_saved_quantized_artifact(tmp_path, capsys, digits_mlp):
    model, data = digits_mlp
    q = copy.deepcopy(model)
    st.quantize(q, st.StaticQuant(calibration_batches=2), data=data.calibration)
    saved = st.save(q, tmp_path / "q")
    out = tmp_path / "q.onnx"
    assert main(["export", "zoo:digits-mlp", "--artifact", str(saved), "-o", str(out), "--static-batch",
                 "--int8-outputs"]) == 0
    assert "int8 tolerance" in capsys.readouterr().out
    proto = onnx.load(str(out))
    ops = [n.op_type for n in proto.graph.node]
    assert ops.count("QuantizeLinear") > 3  # inputs and (with --int8-outputs) outputs of the int8 layers
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 1


def test_bad_output_name_is_one_line(tmp_path, capsys):
    assert main(["export", "zoo:digits-mlp", "-o", str(tmp_path / "m.pt")]) == 2
    err = capsys.readouterr().err
    assert ".onnx" in err and "Traceback" not in err and err.count("\n") == 1
