"""``slimtorch.measure``: one ``Metrics`` record of a model, every number measured on a real run."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, Literal

import torch
from torch import nn

from slimtorch._log import logger
from slimtorch.data import batch_size, call
from slimtorch.errors import ConfigError, UnsupportedModelError
from slimtorch.measure.flops import count_flops
from slimtorch.measure.latency import time_alternating, time_fn
from slimtorch.measure.memory import model_device, peak_memory_bytes
from slimtorch.measure.size import artifact_bytes, count_params
from slimtorch.preflight import materialize


@dataclasses.dataclass
class Metrics:
    """What ``slimtorch.measure`` found. Sizes in bytes, times in milliseconds, accuracy as ``eval_fn`` gives it."""

    params: int
    nonzero_params: int
    size_bytes: int
    flops: int
    macs: int
    latency_ms: float
    latency_p90_ms: float
    peak_memory_bytes: int
    accuracy: float | None
    batch_size: int
    threads: int
    runtime: str = "torch"
    label: str = ""

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict of every field."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Metrics:
        """Rebuild from ``to_dict()`` output (unknown keys ignored)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names})


def timed_call(model: nn.Module, example_inputs: Any) -> Callable[[], None]:
    """A zero-argument call of ``model`` on ``example_inputs`` for timing (CUDA models synchronized after it)."""
    device = model_device(model)

    def forward() -> None:
        call(model, example_inputs)
        if device.type == "cuda":  # time the kernels, not their launch
            torch.cuda.synchronize(device)

    return forward


def retime_side_by_side(records: dict[str, tuple[nn.Module, Metrics]], example_inputs: Any) -> dict[str, Metrics]:
    """Re-time models on the same inputs in alternating blocks and return their records with the new latencies.

    Separate ``measure`` calls minutes apart can differ by 2x from machine load and from the state of the
    process's memory allocator alone (see docs/measuring.md); a before/after ratio is only fair when both are
    timed together. Each model runs in eval mode (its mode is restored).

    Returns:
        Name -> a copy of the given ``Metrics`` with ``latency_ms`` (median) and ``latency_p90_ms`` replaced.
    """
    modes = {name: model.training for name, (model, _) in records.items()}
    try:
        fns = {name: timed_call(model.eval(), example_inputs) for name, (model, _) in records.items()}
        timings = time_alternating(fns)
    finally:
        for name, (model, _) in records.items():
            model.train(modes[name])
    return {name: dataclasses.replace(m, latency_ms=timings[name].median_ms, latency_p90_ms=timings[name].p90_ms)
            for name, (_, m) in records.items()}


#: runtime name -> the function measuring a model in it, for runtimes other than "torch": ``slimtorch.onnx.runtime``
#: registers "onnxruntime" (``import slimtorch`` imports it), so that this floor never imports the ONNX one above it
RUNTIMES: dict[str, Callable[..., Metrics]] = {}


def measure(
    model: nn.Module | str,
    example_inputs: Any,
    *,
    eval_fn: Callable[[nn.Module], float] | None = None,
    runtime: Literal["torch", "onnxruntime"] = "torch",
    warmup: int = 3,
    repeats: int = 30,
    max_seconds: float = 10.0,
    label: str = "",
) -> Metrics:
    """Measure a model: parameters, saved size, FLOPs, latency, peak memory and (optionally) accuracy.

    Latency is timed on ``example_inputs`` (so their batch size is the one recorded) after ``warmup``
    calls, with the current ``torch.get_num_threads()``; a model on a CUDA device is synchronized after
    every call. The size is the file ``slimtorch.save`` writes. Lazy modules (``nn.LazyLinear``) get their
    shapes from one forward on ``example_inputs`` first.

    Args:
        model: the model (put in eval mode for the measurement and restored after).
        example_inputs: a tensor, a tuple of positional inputs or a dict of keyword inputs.
        eval_fn: called as ``eval_fn(model)``; its return value is recorded as ``accuracy``.
        runtime: "torch", or "onnxruntime" to measure an exported ``.onnx`` file given as ``model``.
        warmup: untimed calls before timing.
        repeats: timed calls (fewer if ``max_seconds`` runs out, never fewer than 5).
        max_seconds: time budget for the timed calls.
        label: a name for the record in tables.

    Returns:
        A :class:`Metrics` record.

    Example:
        >>> import slimtorch as st, torch
        >>> m = st.measure(torch.nn.Linear(64, 32), torch.randn(8, 64))
        >>> m.params, m.macs
        (2080, 16384)
    """
    if runtime != "torch":
        if runtime not in RUNTIMES:
            raise ConfigError(f"measure(runtime={runtime!r}) is not supported; use one of "
                              f"{['torch', *sorted(RUNTIMES)]}")
        return RUNTIMES[runtime](model, example_inputs, eval_fn=eval_fn, warmup=warmup, repeats=repeats,
                                 max_seconds=max_seconds, label=label)
    if not isinstance(model, nn.Module):
        raise UnsupportedModelError(f"measure() needs an nn.Module for runtime='torch', got {type(model).__name__}")
    materialize(model, example_inputs)
    was_training = model.training
    model.eval()
    try:
        params, nonzero = count_params(model)
        try:
            with torch.inference_mode():
                call(model, example_inputs)
        except Exception as err:  # the user's model failed on the user's inputs: say which
            raise UnsupportedModelError(
                f"the model failed on the example inputs ({type(err).__name__}: {err}); "
                "pass inputs of the shape the model expects"
            ) from err
        # no progress bar while timing: its refresh thread would share the cores with the model
        logger.info("measuring %s: FLOPs, latency (up to %.0f s), peak memory, saved size%s", label or "the model",
                    max_seconds, ", accuracy" if eval_fn is not None else "")
        flops = count_flops(model, example_inputs)
        timing = time_fn(timed_call(model, example_inputs), warmup=warmup, repeats=repeats, max_seconds=max_seconds)
        peak = peak_memory_bytes(model, example_inputs)
        size = artifact_bytes(model)
        accuracy = float(eval_fn(model)) if eval_fn is not None else None
    finally:
        model.train(was_training)
    return Metrics(
        params=params,
        nonzero_params=nonzero,
        size_bytes=size,
        flops=flops,
        macs=flops // 2,
        latency_ms=timing.median_ms,
        latency_p90_ms=timing.p90_ms,
        peak_memory_bytes=peak,
        accuracy=accuracy,
        batch_size=batch_size(example_inputs),
        threads=torch.get_num_threads(),
        runtime="torch",
        label=label,
    )
