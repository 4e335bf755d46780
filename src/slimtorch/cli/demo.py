"""``slimtorch demo [-o OUT]``: the whole pipeline on the zoo CNN with the built-in demo recipe."""

from __future__ import annotations

import argparse

from slimtorch.cli import options

DEFAULT_OUT = "slimtorch-demo"


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register the ``demo`` sub-command."""
    p = sub.add_parser("demo", help="train (or load) the zoo CNN, compress it with the demo recipe, report")
    p.add_argument("-o", "--out", type=options.output_folder, default=DEFAULT_OUT,
                   help=f"output folder (default: ./{DEFAULT_OUT})")
    p.add_argument("--model", type=options.zoo_model, default="zoo:digits-cnn",
                   help="zoo model to use (default: zoo:digits-cnn)")
    p.add_argument("--recipe", type=options.recipe, default="builtin:demo",
                   help="a YAML recipe file or builtin:NAME (default: builtin:demo)")
    p.add_argument("--batch-size", type=options.positive_int, default=32, help="batch size for latency measurements")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Run the demo; prints the before/after table and the report paths."""
    from slimtorch.cli.compress import compress_and_report
    from slimtorch.cli.model_spec import resolve_model

    recipe = args.recipe  # read and validated by the parser
    resolved = resolve_model(args.model)
    print(f"slimtorch demo: {args.model} with recipe {recipe.name or '(unnamed)'}: " + " -> ".join(
        f"{s.stage}({s.method})" for s in recipe.stages))
    files = compress_and_report(resolved, recipe, resolved.data, args.out, batch_size=args.batch_size,
                                resume=False, seed=0, title=f"slimtorch demo: {args.model}")
    print(f"report: {files['md']}  {files['html']}  {files['json']}")
    return 0
