"""Running a recipe: stages in order, each measured, with atomic checkpoints so a run can resume, then the
files the recipe asks for (the model, its ONNX export) and the report.

``slimtorch.compress`` and ``slimtorch compress`` both call :func:`compress`, so the Python API and the CLI write
the same files. :func:`run_recipe` is the recipe alone; the :class:`~slimtorch.record.RunRecord` it returns
(before/after metrics, one entry per stage, per-layer facts) is what the report is written from.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from slimtorch._log import logger
from slimtorch.config import Config
from slimtorch.data import iter_inputs
from slimtorch.errors import ArtifactError, DataError
from slimtorch.handlers import apply
from slimtorch.measure.layers import layer_table
from slimtorch.measure.metrics import Metrics, measure, retime_side_by_side
from slimtorch.preflight import check_finite, materialize
from slimtorch.recipe import Recipe
from slimtorch.record import RunRecord, StageRecord
from slimtorch.train.distributed import is_main

CHECKPOINTS = "checkpoints"


def check_data(recipe: Recipe, data: Any) -> None:
    """Raise DataError before any work if a stage needs data and none was given, naming the stage."""
    if data is not None:
        return
    for i, cfg in enumerate(recipe.stages):
        if cfg.requires_data():
            raise DataError(
                f"stage {i + 1} ({cfg.stage}.{cfg.method}) needs data but none was given: pass data= "
                "(Python) or --data (CLI)"
            )


def _apply_stage(model: nn.Module, cfg: Config, *, data: Any, example_inputs: Any, teacher: nn.Module | None,
                 seed: int) -> nn.Module:
    extra = {"teacher": teacher} if cfg.takes_teacher else {}
    return apply(cfg.stage, model, cfg, data=data, example_inputs=example_inputs, select=None, seed=seed, **extra)


def _checkpoint_path(out_dir: Path, index: int) -> Path:
    return out_dir / CHECKPOINTS / f"stage-{index + 1:02d}.safetensors"


def _latest_checkpoint(out_dir: Path, recipe: Recipe) -> tuple[int, dict[str, Any]] | None:
    from slimtorch.io.load import read_manifest

    for index in reversed(range(len(recipe.stages))):
        path = _checkpoint_path(out_dir, index)
        if not path.is_file():
            continue
        extra = read_manifest(path).get("extra", {})
        if extra.get("recipe") != recipe.to_dict():
            raise ArtifactError(f"{path} was written by a different recipe; use a new output folder or drop --resume")
        return index, extra
    return None


def run_recipe(
    model: nn.Module,
    recipe: Recipe,
    *,
    data: Any = None,
    example_inputs: Any = None,
    eval_fn: Callable[[nn.Module], float] | None = None,
    out_dir: str | Path | None = None,
    resume: bool = False,
    measure_stages: bool = True,
    seed: int = 0,
) -> RunRecord:
    """Apply every stage of ``recipe`` to ``model`` in place, measuring before, after and between stages.

    Args:
        model: the model to compress (changed in place; the original is kept as a frozen teacher).
        recipe: the validated recipe.
        data: the data object or loader; needed by fine-tuning, calibration and data-driven importance.
        example_inputs: inputs for tracing and measuring; the first batch of ``data`` when None.
        eval_fn: accuracy function ``eval_fn(model) -> float`` recorded in the metrics.
        out_dir: where checkpoints go (one per stage, written atomically); None: no checkpoints.
        resume: continue after the last checkpoint in ``out_dir`` written by the same recipe.
        measure_stages: measure the model after every stage (else only before and after).
        seed: seed of every stage.

    Returns:
        The :class:`RunRecord` of the run.

    Raises:
        DataError: a stage needs data and none was given, or the model holds NaN or Inf weights (before any work).
        UnsupportedModelError: lazy modules that the example inputs cannot materialise.
    """
    from slimtorch.io.load import load
    from slimtorch.io.save import save
    from slimtorch.train.finetune import frozen_copy

    check_data(recipe, data)
    if example_inputs is None:
        if data is None:
            raise DataError("pass example_inputs= (or data=, whose first batch is used) to trace and measure")
        example_inputs = _first_batch(data)
    materialize(model, example_inputs)
    check_finite(model)  # refused before the first measurement and stage, not after them
    record = RunRecord(recipe=recipe.to_dict())
    teacher = frozen_copy(model)
    record.before = measure(model, example_inputs, eval_fn=eval_fn, label="before")
    record.layers_before = layer_table(model)
    start_index = 0
    out = Path(out_dir) if out_dir is not None else None
    if resume:
        if out is None:
            raise DataError("resume needs the output folder that holds the checkpoints (out_dir / -o)")
        found = _latest_checkpoint(out, recipe)
        if found is not None:
            index, extra = found
            load(_checkpoint_path(out, index), model=model)
            record.stages = [StageRecord(**s) for s in extra.get("stages", [])]
            start_index = index + 1
            logger.info("resuming after stage %d from %s", index + 1, _checkpoint_path(out, index))
    for index in range(start_index, len(recipe.stages)):
        cfg = recipe.stages[index]
        logger.info("stage %d/%d: %s (%s)", index + 1, len(recipe.stages), cfg.stage, cfg.method)
        started = time.perf_counter()
        _apply_stage(model, cfg, data=data, example_inputs=example_inputs, teacher=teacher, seed=seed)
        seconds = time.perf_counter() - started
        metrics = None
        if measure_stages:
            metrics = measure(model, example_inputs, eval_fn=eval_fn, label=f"after {cfg.stage}").to_dict()
        record.stages.append(StageRecord(index, cfg.stage, cfg.method, cfg.to_dict(), seconds, metrics,
                                         layer_table(model)))
        if out is not None and is_main():  # under torchrun every rank holds the same model: rank 0 writes
            extra = {"recipe": recipe.to_dict(), "stages": [s.to_dict() for s in record.stages]}
            save(model, _checkpoint_path(out, index), extra=extra)
    last = record.stages[-1].metrics if record.stages else None
    if last is not None and start_index < len(recipe.stages):
        record.after = Metrics.from_dict({**last, "label": "after"})
    else:
        record.after = measure(model, example_inputs, eval_fn=eval_fn, label="after")
    if record.before.runtime == record.after.runtime == "torch":
        _retime_together(record, teacher, model, example_inputs, out)
    return record


def compress(
    model: nn.Module,
    recipe: Recipe,
    *,
    data: Any = None,
    example_inputs: Any = None,
    eval_fn: Callable[[nn.Module], float] | None = None,
    out_dir: str | Path | None = None,
    resume: bool = False,
    seed: int = 0,
    title: str | None = None,
) -> RunRecord:
    """Run ``recipe`` on ``model`` in place (:func:`run_recipe`) and, with ``out_dir``, write into it what the
    recipe's ``export`` asks for (``model.safetensors`` with the recipe in its manifest; ``model.onnx``, whose
    static int8 layers chain uint8 outputs calibrated on ``data``) and the report (``report.json``, ``.md``,
    ``.html``, plots). Every rank of a torchrun job runs the recipe; rank 0 writes.

    Args:
        model, recipe, data, example_inputs, eval_fn, resume, seed: as :func:`run_recipe`.
        out_dir: the output folder (checkpoints, model, exports, report); None: nothing is written.
        title: the report's title; None: the recipe's name.

    Returns:
        The run's :class:`~slimtorch.record.RunRecord`; its ``files`` name every file written (``safetensors``,
        ``onnx``, ``json``, ``md``, ``html`` and the plots), none without an output folder or on ranks other
        than 0 under torchrun.

    Raises:
        DataError: a stage needs data and none was given (before any work).
        ConfigError: ``onnx`` is listed in ``export`` and the ONNX packages are missing (before any work).
        UnsupportedModelError: the model does not export to ONNX.
    """
    if out_dir is not None and "onnx" in recipe.export:
        from slimtorch.onnx.export import require_onnx

        require_onnx()  # fail before any work if the export could not run at the end
    if example_inputs is None and data is not None:
        example_inputs = _first_batch(data)  # read once: the stages, the measurements and the export use it
    record = run_recipe(model, recipe, data=data, example_inputs=example_inputs, eval_fn=eval_fn, out_dir=out_dir,
                        resume=resume, seed=seed)
    if out_dir is None or not is_main():
        return record
    from slimtorch.io.save import save
    from slimtorch.report import write_report

    out = Path(out_dir)
    artifacts = {}
    if "safetensors" in recipe.export:
        artifacts["safetensors"] = str(save(model, out / "model", extra={"recipe": recipe.to_dict()}))
    if "onnx" in recipe.export:
        from slimtorch.onnx.export import export_onnx

        one = example_inputs[:1] if isinstance(example_inputs, torch.Tensor) else example_inputs
        artifacts["onnx"] = str(export_onnx(model, one, out / "model.onnx", int8_outputs=data))
    files = write_report(record, out, title=title or f"slimtorch compress ({recipe.name or 'recipe'})",
                         artifacts=artifacts)
    record.files = {**artifacts, **{k: str(v) for k, v in files.items()}}
    return record


def _first_batch(data: Any) -> Any:
    """The example inputs :func:`run_recipe` uses when none are given: the first batch of ``data``."""
    return next(iter_inputs(data, 1, split="test" if hasattr(data, "test") else "train"))


def _retime_together(record: RunRecord, original: nn.Module, model: nn.Module, example_inputs: Any,
                     out: Path | None) -> None:
    """Re-time the original, every checkpointed stage and the final model side by side (alternating blocks) and
    put those latencies in the record: measurements minutes apart differ by up to 2x from load and allocator
    state alone, so only latencies taken together make fair ratios. Stages without a checkpoint keep theirs."""
    import copy

    from slimtorch.io.load import load

    last = len(record.stages) - 1
    entries = {"before": (original, record.before)}
    for s in record.stages:
        path = _checkpoint_path(out, s.index) if out is not None else None
        if s.metrics is not None and s.index != last and path is not None and path.is_file():
            entries[f"stage {s.index}"] = (load(path, model=copy.deepcopy(original)), Metrics.from_dict(s.metrics))
    entries["after"] = (model, record.after)
    fair = retime_side_by_side(entries, example_inputs)
    record.before, record.after = fair["before"], fair["after"]
    for s in record.stages:
        if f"stage {s.index}" in fair:
            s.metrics = fair[f"stage {s.index}"].to_dict()
        elif s.index == last and s.metrics is not None:  # the final model is the last stage's model
            s.metrics = {**s.metrics, "latency_ms": record.after.latency_ms,
                         "latency_p90_ms": record.after.latency_p90_ms}
