"""``slimtorch measure MODEL``: print the Metrics of a model (and write them as JSON with --json)."""

from __future__ import annotations

import argparse
import json

from slimtorch.cli import options
from slimtorch.cli.model_spec import example_inputs, resolve_model


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register the ``measure`` sub-command."""
    p = sub.add_parser("measure", help="measure size, FLOPs, latency, memory and accuracy of a model")
    p.add_argument("model", type=options.model_spec,
                   help="zoo:NAME, package.module:factory, or a Hugging Face model folder")
    p.add_argument("--weights", type=options.existing_file,
                   help="state-dict file (.safetensors or weights-only .pt) for a factory model")
    p.add_argument("--input-shape", type=options.shape,
                   help="example input shape, e.g. 1,3,224,224 (zoo models know theirs)")
    p.add_argument("--batch-size", type=options.positive_int, default=None,
                   help="batch size of the example input (zoo models)")
    p.add_argument("--json", dest="json_path", type=options.output_file,
                   help="also write the metrics to this JSON file")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Measure the model and print the metrics; returns the exit code."""
    from slimtorch.io.atomic import write_text
    from slimtorch.measure import measure

    resolved = resolve_model(args.model, args.weights)
    example = example_inputs(resolved, args.input_shape, args.batch_size, args.model)
    eval_fn = resolved.data.evaluate if resolved.data is not None else None
    metrics = measure(resolved.model, example, eval_fn=eval_fn, label=resolved.name)
    for key, value in metrics.to_dict().items():
        print(f"{key:>18}: {value}")
    if args.json_path:
        write_text(args.json_path, json.dumps(metrics.to_dict(), indent=2) + "\n")
    return 0
