"""``slimtorch export MODEL -o out.onnx``: write an ONNX file, check it agrees with PyTorch, optionally measure it."""

from __future__ import annotations

import argparse
import json

from slimtorch.cli import options
from slimtorch.cli.model_spec import example_inputs, resolve_model
from slimtorch.errors import ConfigError


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register the ``export`` sub-command."""
    p = sub.add_parser("export", help="export a (compressed) model to ONNX, checked to agree with PyTorch")
    p.add_argument("model", type=options.model_spec,
                   help="zoo:NAME, package.module:factory, or a Hugging Face model folder")
    p.add_argument("-o", "--output", required=True, type=options.onnx_file, help="the .onnx file to write")
    p.add_argument("--weights", type=options.existing_file,
                   help="state-dict file (.safetensors or weights-only .pt) for a factory model")
    p.add_argument("--artifact", type=options.artifact,
                   help="a model saved by slimtorch (compress -o / st.save) to load onto MODEL's architecture "
                        "before export")
    p.add_argument("--input-shape", type=options.shape,
                   help="example input shape, e.g. 1,3,224,224 (zoo models know theirs)")
    p.add_argument("--batch-size", type=options.positive_int, default=None,
                   help="batch size of the example input (zoo models)")
    p.add_argument("--static-batch", action="store_true", help="fix the batch size instead of leaving it free")
    p.add_argument("--data", type=options.data_spec,
                   help="zoo:NAME, an image folder or package.module:function: data for the agreement check and "
                        "for --int8-outputs (zoo models bring their own)")
    p.add_argument("--int8-outputs", action="store_true",
                   help="quantize static int8 layers' outputs too (calibrated on the data): ONNX Runtime then runs "
                        "integer convolutions end to end")
    p.add_argument("--no-check", action="store_true", help="skip the PyTorch / ONNX Runtime agreement check")
    p.add_argument("--measure", action="store_true", help="also measure the model in PyTorch and ONNX Runtime")
    p.add_argument("--json", dest="json_path", type=options.output_file,
                   help="write the agreement report (and measurements) to this file")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Export, check and (optionally) measure; returns the exit code."""
    from slimtorch.cli.data_spec import resolve_data
    from slimtorch.io.atomic import write_text
    from slimtorch.io.load import load
    from slimtorch.measure import measure
    from slimtorch.onnx.check import check_agreement
    from slimtorch.onnx.export import export_onnx
    from slimtorch.preflight import materialize

    resolved = resolve_model(args.model, args.weights)
    if args.data:
        resolved.data = resolve_data(args.data)
    model = resolved.model
    if args.artifact:
        model = load(args.artifact, model)
    example = example_inputs(resolved, args.input_shape, args.batch_size, args.model)
    materialize(model, example)
    int8_outputs = None
    if args.int8_outputs:
        if resolved.data is None:
            raise ConfigError("--int8-outputs needs calibration data: pass --data (zoo models bring their own)")
        int8_outputs = getattr(resolved.data, "calibration", None) or resolved.data.train
    path = export_onnx(model, example, args.output, dynamic_batch=not args.static_batch, check=False,
                       int8_outputs=int8_outputs)
    print(f"wrote {path} ({path.stat().st_size / 1e3:.1f} kB)")
    result: dict = {"path": str(path)}
    if not args.no_check:
        data = resolved.data if resolved.data is not None and not args.static_batch else example
        report = check_agreement(model, path, data)
        print(report.summary())
        result["agreement"] = report.to_dict()
    if args.measure:
        eval_fn = resolved.data.evaluate if resolved.data is not None else None
        rows = {"torch": measure(model, example, eval_fn=eval_fn, label=resolved.name),
                "onnxruntime": measure(str(path), example, eval_fn=eval_fn, runtime="onnxruntime",
                                       label=resolved.name)}
        print(f"{'runtime':>12} {'latency ms':>11} {'size kB':>9} {'accuracy':>9}")
        for name, m in rows.items():
            acc = "-" if m.accuracy is None else f"{m.accuracy:.4f}"
            print(f"{name:>12} {m.latency_ms:>11.3f} {m.size_bytes / 1e3:>9.1f} {acc:>9}")
        result["metrics"] = {name: m.to_dict() for name, m in rows.items()}
    if args.json_path:
        write_text(args.json_path, json.dumps(result, indent=2, default=str) + "\n")
    return 0
