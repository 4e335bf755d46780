"""Latency: warm-up, then repeated timed calls, quoted as median and p90 in milliseconds. Every timing loop of
the package lives here: whole models (``time_fn``), contenders side by side (``time_alternating``, which the
kernel races of quantized and sparse layers use too), and CUDA kernels with CUDA events (``time_cuda``).

Every timing first pins glibc's malloc thresholds (once per process, :mod:`slimtorch.measure.allocator`), so a
latency does not depend on what ran before it in the process.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from slimtorch.measure.allocator import pin_allocator


@dataclass(frozen=True)
class Timing:
    """Per-call times of one contender, in milliseconds."""

    samples_ms: list[float]

    @property
    def median_ms(self) -> float:
        """Median time per call (ms)."""
        return statistics.median(self.samples_ms)

    @property
    def p90_ms(self) -> float:
        """90th percentile time per call (ms)."""
        ordered = sorted(self.samples_ms)
        return ordered[min(len(ordered) - 1, int(round(0.9 * (len(ordered) - 1))))]


def time_fn(
    fn: Callable[[], object], *, warmup: int = 3, repeats: int = 30, max_seconds: float = 10.0
) -> Timing:
    """Time ``fn()``: ``warmup`` untimed calls, then up to ``repeats`` timed calls within ``max_seconds``.

    The process's malloc thresholds are pinned first (:func:`slimtorch.measure.allocator.pin_allocator`).

    Returns:
        The per-call times in ms (at least 5 samples unless one call exceeds ``max_seconds`` / 5).
    """
    pin_allocator()
    with torch.inference_mode():
        for _ in range(warmup):
            fn()
        samples = []
        deadline = time.perf_counter() + max_seconds
        while len(samples) < repeats and (len(samples) < 5 or time.perf_counter() < deadline):
            start = time.perf_counter()
            fn()
            samples.append((time.perf_counter() - start) * 1e3)
    return Timing(samples)


def time_alternating(
    fns: dict[str, Callable[[], object]], *, blocks: int = 6, repeats: int = 10, warmup: int = 3,
    max_seconds: float = 10.0,
) -> dict[str, Timing]:
    """Per-call times of several contenders, timed in alternating blocks (``repeats`` calls of A, of B, ..., again).

    Every call is a sample, so medians and p90s keep their per-call meaning, while load drift on a shared
    machine hits all contenders alike (round-robin rounds of a fraction of a second each let one noise burst
    hit one contender's whole round).

    Returns:
        Contender name -> up to ``blocks * repeats`` per-call samples (ms); a block stops early, after at least 5
        calls, once its share of ``max_seconds`` is spent.
    """
    samples: dict[str, list[float]] = {name: [] for name in fns}
    share = max_seconds / (blocks * max(len(fns), 1))
    for block in range(blocks):
        for name, fn in fns.items():
            timing = time_fn(fn, warmup=warmup if block == 0 else 1, repeats=repeats, max_seconds=share)
            samples[name] += timing.samples_ms
    return {name: Timing(s) for name, s in samples.items()}


def time_cuda(fns: dict[str, Callable[[], object]], *, rounds: int = 7, iters: int = 20,
              warmup: int = 3) -> dict[str, float]:
    """Median ms per call of each CUDA contender, timed round-robin with CUDA events.

    Args:
        fns: name -> a call that launches work on the current CUDA device.
        rounds: rounds; each runs every contender ``iters`` times between two events.
        iters: calls per contender per round.
        warmup: untimed calls per contender first.

    Returns:
        Name -> median over rounds of the mean ms per call.
    """
    samples: dict[str, list[float]] = {name: [] for name in fns}
    with torch.inference_mode():
        for fn in fns.values():
            for _ in range(warmup):
                fn()
        torch.cuda.synchronize()
        for _ in range(rounds):
            for name, fn in fns.items():
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                for _ in range(iters):
                    fn()
                end.record()
                end.synchronize()
                samples[name].append(start.elapsed_time(end) / iters)
    return {name: sorted(s)[len(s) // 2] for name, s in samples.items()}
