"""Packed binary/ternary layers vs the float layer of the same shape: latency and weight bytes.

One process, one layer shape at a time; contenders are timed in alternating blocks of calls (``time_alternating``):
eager fp32 ``nn.Linear``/``nn.Conv2d`` (MKL/oneDNN), the same layer in ONNX Runtime (the fastest fp32 path we
have without compiling), and slimtorch's ``BinaryLinear``/``BinaryConv2d`` forced onto each kernel:
lookup tables on the packed bits (binary and ternary weights, real inputs), XNOR-popcount on packed bits (fully
binary) and the unpack-per-call GEMM that ``kernel="auto"`` uses for many rows.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import main, ort_runner  # noqa: E402

from slimtorch.measure.latency import time_alternating  # noqa: E402
from slimtorch.quant.binary.modules import BinaryConv2d, BinaryLinear  # noqa: E402


def _cases(quick: bool):
    torch.manual_seed(0)
    yield "Linear 1024x1024 (digits-mlp fc2), batch 1", nn.Linear(1024, 1024), torch.randn(1, 1024)
    yield "Linear 4096x4096, batch 1", nn.Linear(4096, 4096), torch.randn(1, 4096)
    yield "Linear 1024x1024, batch 8", nn.Linear(1024, 1024), torch.randn(8, 1024)
    if not quick:
        yield "Linear 1024x1024, batch 64", nn.Linear(1024, 1024), torch.randn(64, 1024)
        yield ("Conv 128->128 3x3 @4x4 (digits-cnn layer3), batch 1", nn.Conv2d(128, 128, 3, padding=1, bias=False),
               torch.randn(1, 128, 4, 4))


def _packed(layer: nn.Module, kernel: str, **mode):
    cls = BinaryLinear if isinstance(layer, nn.Linear) else BinaryConv2d
    packed = cls.from_float(layer, **mode).eval()
    packed.kernel = kernel
    return packed


def _bytes(module: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in [*module.parameters(), *module.buffers()])


def run(quick: bool) -> dict:
    rows, raw, notes = [], {}, []
    for name, layer, x in _cases(quick):
        layer = layer.eval()
        variants = {
            "binary W, LUT on packed bits": _packed(layer, "packed"),
            "ternary W, LUT on packed bits": _packed(layer, "packed", ternary=True),
            "binary W+A, XNOR-popcount": _packed(layer, "packed", activations=True),
            "binary W, unpack per call + GEMM": _packed(layer, "unpacked"),
        }
        # spinning off: idle ONNX Runtime workers would tax the torch contender timed next
        fns = {"eager fp32": lambda layer=layer, x=x: layer(x), "ORT fp32": ort_runner(layer, x, spinning=False)}
        fns.update({k: (lambda m=m, x=x: m(x)) for k, m in variants.items()})
        timings = time_alternating(fns, blocks=4 if quick else 30, repeats=20, max_seconds=2 if quick else 12)
        eager, ort = timings["eager fp32"].median_ms, timings["ORT fp32"].median_ms
        fastest = min(eager, ort)
        raw[name] = {k: t.samples_ms for k, t in timings.items()}
        for key, t in timings.items():
            module = variants.get(key, layer)
            ratio_size = _bytes(layer) / _bytes(module)
            rows.append([name, key, t.median_ms, t.p90_ms, eager / t.median_ms, fastest / t.median_ms,
                         _bytes(module), ratio_size])
        best = min(variants, key=lambda k: timings[k].median_ms)
        notes.append(f"{name}: fastest binary path is '{best}' at {fastest / timings[best].median_ms:.2f}x the "
                     f"fastest fp32 path ({'eager' if eager <= ort else 'ORT'}, {fastest:.3f} ms).")
    load = os.getloadavg()[0]
    if load > (os.cpu_count() or 1):
        notes.append(f"The machine was oversubscribed (load average {load:.1f} on {os.cpu_count()} cores): torch's "
                     "2-thread kernels then wait on descheduled threads and every multi-op path suffers most, so "
                     "these ratios are not the hardware's; see binary_speed_quiet_host.md for a quiet run.")
    notes += [
        "Speedup columns are fp32 time / this time (above 1 = faster). 'vs fastest fp32' divides by the faster of "
        "eager and ONNX Runtime for that shape.",
        "The lookup-table path costs 256 x 8 multiply-adds per 8 inputs and row to build the tables, so it can only "
        "win where the float layer is bound by reading its weights (one or a few rows); BinaryLinear/Conv2d with "
        "kernel='auto' use it for at most 16 rows and the unpack + dense GEMM above that.",
        "XNOR-popcount runs on torch's vectorized uint8 ops (no custom kernel, no popcount instruction exposed by "
        "torch), so it makes several passes over an (rows, out, bytes) block; it is exact but not a speed win here.",
        "Weight bytes count every tensor of the layer (packed bits, float32 scales, bias); the size win is the "
        "promise, speed is only claimed where the table shows it.",
    ]
    return {
        "title": "Binary and ternary layers on packed bits vs float32",
        "description": "Latency of one layer (median and p90 per call, ms, timed in alternating blocks of 20 "
                       "calls) and its weight bytes.",
        "columns": ["shape", "variant", "median ms", "p90 ms", "speedup vs eager fp32", "speedup vs fastest fp32",
                    "weight bytes", "size ratio vs fp32"],
        "rows": rows,
        "notes": notes,
        "data": raw,
    }


if __name__ == "__main__":
    main("binary_speed", run)
