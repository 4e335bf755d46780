"""``slimtorch compress MODEL --recipe R.yaml|builtin:NAME --data DATA -o OUT [--resume]``."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch

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
    """Run ``recipe`` on a resolved model, write the artifacts and the report into ``out``; returns the files
    (none on ranks other than 0 under torchrun: every rank runs the recipe, rank 0 writes)."""
    from slimtorch.io.save import save
    from slimtorch.pipeline import check_data, run_recipe
    from slimtorch.report import write_report
    from slimtorch.train.distributed import is_main

    if resolved.data is not None and data is None:
        data = resolved.data
    check_data(recipe, data)
    if "onnx" in recipe.export:
        from slimtorch.onnx import export as _onnx  # noqa: F401  (fail before any work if ONNX export is missing)
    example = _example(resolved, data, batch_size)
    eval_fn = getattr(data, "evaluate", None)
    model = resolved.model
    record = run_recipe(model, recipe, data=data, example_inputs=example, eval_fn=eval_fn, out_dir=out,
                        resume=resume, seed=seed)
    if not is_main():  # under torchrun only rank 0 writes the model and the report
        return {}
    artifacts = {}
    if "safetensors" in recipe.export:
        artifacts["safetensors"] = str(save(model, out / "model", extra={"recipe": recipe.to_dict()}))
    if "onnx" in recipe.export:
        from slimtorch.onnx.export import export_onnx

        onnx_example = example[:1] if isinstance(example, torch.Tensor) else example
        # static int8 layers chain uint8 outputs (QLinearConv/QGemm in ONNX Runtime), calibrated on the data
        export_onnx(model, onnx_example, out / "model.onnx", int8_outputs=data)
        artifacts["onnx"] = str(out / "model.onnx")
    files = write_report(record, out, title=title, artifacts=artifacts)
    print(_comparison(record))
    return files


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
