"""``slimtorch compress MODEL --recipe R.yaml|builtin:NAME --data DATA -o OUT [--resume]``."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from slimtorch.cli import options
from slimtorch.errors import ConfigError


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register the ``compress`` sub-command."""
    from slimtorch.recipe import builtin_names

    p = sub.add_parser("compress", help="run a recipe (prune, decompose, quantize, fine-tune) and write a report")
    p.add_argument("model", type=options.model_spec,
                   help="zoo:NAME, package.module:factory, or a Hugging Face model folder")
    p.add_argument("--recipe", required=True, type=options.recipe,
                   help=f"a YAML recipe file or builtin:NAME ({', '.join(builtin_names())})")
    p.add_argument("--data", type=options.data_spec,
                   help="zoo:NAME, an image folder (one sub-folder per class), or package.module:function")
    p.add_argument("-o", "--out", required=True, type=options.output_folder,
                   help="output folder for the model, checkpoints and the report")
    p.add_argument("--resume", action="store_true", help="continue after the last checkpoint in OUT")
    p.add_argument("--weights", type=options.existing_file,
                   help="state-dict file (.safetensors or weights-only .pt) for a factory model")
    p.add_argument("--batch-size", type=options.positive_int, default=32,
                   help="batch size for latency measurements (default 32)")
    p.add_argument("--image-size", type=options.positive_int, default=224,
                   help="side of images read from an image folder")
    p.add_argument("--seed", type=options.seed, default=0)
    p.set_defaults(run=run)


def _example(resolved: Any, data: Any, batch_size: int) -> Any:
    for source in (data, resolved.data):
        if source is not None and hasattr(source, "example_inputs"):
            return source.example_inputs(batch_size)
    if resolved.example_inputs is not None:
        return resolved.example_inputs
    raise ConfigError("cannot tell the model's input: pass --data so its first batch can be used")


def compress_and_report(resolved: Any, recipe: Any, data: Any, out: Path, *, batch_size: int, resume: bool,
                        seed: int, title: str) -> dict[str, Path]:
    """Run ``recipe`` on a resolved model through ``slimtorch.pipeline.compress`` (what ``st.compress`` runs),
    writing the artifacts and the report into ``out``, and print the before/after table; returns the files
    (none on ranks other than 0 under torchrun: every rank runs the recipe, rank 0 writes)."""
    from slimtorch.pipeline import check_data, compress

    if resolved.data is not None and data is None:
        data = resolved.data
    check_data(recipe, data)
    record = compress(resolved.model, recipe, data=data, example_inputs=_example(resolved, data, batch_size),
                      eval_fn=getattr(data, "evaluate", None), out_dir=out, resume=resume, seed=seed, title=title)
    if record.files:
        print(_comparison(record))
    return {name: Path(path) for name, path in record.files.items()}


def _comparison(record: Any) -> str:
    from slimtorch.measure.compare import compare

    return str(compare(record.before, record.after))


def run(args: argparse.Namespace) -> int:
    """Resolve model, data and recipe (all validated before any work), run it, write everything to OUT."""
    from slimtorch.cli.data_spec import resolve_data
    from slimtorch.cli.model_spec import resolve_model

    recipe = args.recipe  # read and validated by the parser
    data = resolve_data(args.data, args.image_size)
    resolved = resolve_model(args.model, args.weights)
    out = args.out
    files = compress_and_report(resolved, recipe, data, out, batch_size=args.batch_size, resume=args.resume,
                                seed=args.seed, title=f"slimtorch compress {args.model} ({recipe.name or 'recipe'})")
    if files:
        print(f"report: {files['md']}  {files['html']}  {files['json']}")
    return 0
