"""slimtorch.measure latency against torch.utils.benchmark.Timer on the same models: they should agree."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch.utils.benchmark import Timer

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import main  # noqa: E402

import slimtorch as st  # noqa: E402
from slimtorch.measure.latency import time_fn  # noqa: E402


def _models(quick: bool):
    yield "digits-cnn, batch 64", st.zoo.build("digits-cnn").eval(), torch.randn(64, 1, 16, 16)
    yield "MLP 1024-4096-1024, batch 32", torch.nn.Sequential(
        torch.nn.Linear(1024, 4096), torch.nn.ReLU(), torch.nn.Linear(4096, 1024)
    ).eval(), torch.randn(32, 1024)
    if not quick:
        conv = torch.nn.Conv2d(64, 64, 3, padding=1).eval()
        yield "Conv 64->64 3x3 @56x56, batch 8", conv, torch.randn(8, 64, 56, 56)


def run(quick: bool) -> dict:
    rows = []
    rounds = 2 if quick else 5
    for name, model, x in _models(quick):
        ours, theirs = [], []
        for _ in range(rounds):  # alternate the two timers so drift hits both
            ours.append(time_fn(lambda m=model, x=x: m(x), warmup=3, repeats=30).median_ms)
            with torch.inference_mode():
                timer = Timer("model(x)", globals={"model": model, "x": x}, num_threads=torch.get_num_threads())
                m = timer.blocked_autorange(min_run_time=0.5)
            theirs.append(m.median * 1e3)
        ours_ms, theirs_ms = sorted(ours)[len(ours) // 2], sorted(theirs)[len(theirs) // 2]
        rows.append([name, ours_ms, theirs_ms, ours_ms / theirs_ms])
    return {
        "title": "measure() latency vs torch.utils.benchmark.Timer",
        "description": "Median latency of the same model and input from slimtorch's timer and from "
        "torch.utils.benchmark.Timer.blocked_autorange, alternated over rounds in one process.",
        "columns": ["model", "slimtorch median ms", "torch Timer median ms", "ratio"],
        "rows": rows,
        "notes": ["A ratio near 1.0 (within run-to-run noise, about 10%) means measure() reports what "
                  "torch's own benchmark utility reports."],
    }


if __name__ == "__main__":
    main("measure_latency", run)
