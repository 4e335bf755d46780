"""Benchmark harness: every ``bench_*.py`` defines ``run(quick: bool) -> dict`` and calls :func:`main`.

A result dict holds::

    {"title": "...", "description": "what is compared, on which model and data",
     "columns": ["variant", "latency ms", "speedup vs eager fp32", ...],
     "rows": [[...], ...],              # one list per row, in column order
     "notes": ["finding 1", ...],       # what the numbers say, honestly
     "data": {...}}                      # anything else worth keeping (raw timings)

The harness adds the environment (torch version, threads, CPU, load average before the run) and writes
``benchmarks/results/NAME.json`` and ``benchmarks/results/NAME.md`` atomically.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

RESULTS = Path(__file__).resolve().parent / "results"


#: CPU features that decide which integer / bfloat16 kernels exist (AMX tiles make int8 GEMMs several times
#: faster than AVX-512 VNNI): machines drawn for different sessions differ in them
_ISA_FLAGS = ("avx2", "avx_vnni", "avx512f", "avx512_vnni", "avx512_bf16", "amx_int8", "amx_bf16")


def environment() -> dict[str, Any]:
    """Versions, threads, CPU (model and the int8/bf16 features it has) and machine load, recorded with every
    result."""
    cpu, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    return {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "cpu": cpu,
        "isa": " ".join(f for f in _ISA_FLAGS if f in flags) or "unknown",
        "cores": os.cpu_count(),
        "loadavg_before": os.getloadavg()[0],
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


def to_markdown(name: str, result: dict[str, Any]) -> str:
    """The result as a markdown section: title, description, table, notes and environment."""
    env = result["environment"]
    lines = [f"# {result.get('title', name)}", "", result.get("description", ""), ""]
    cols = result["columns"]
    lines.append("| " + " | ".join(cols) + " |")
    lines.append("|" + "---|" * len(cols))
    for row in result["rows"]:
        lines.append("| " + " | ".join(_cell(v) for v in row) + " |")
    lines.append("")
    for note in result.get("notes", []):
        lines.append(f"- {note}")
    lines.append("")
    lines.append(
        f"_torch {env['torch']}, {env['threads']} threads, {env['cpu']} ({env['cores']} cores"
        f"{', ' + env['isa'] if 'isa' in env else ''}), "
        f"load average before the run {env['loadavg_before']:.2f}, {env['date']}, "
        f"{'quick' if result.get('quick') else 'full'} run, {result['seconds']:.0f} s"
        f"{', allocator ' + env['allocator'] if 'allocator' in env else ''}._"
    )
    return "\n".join(lines) + "\n"


def write(name: str, result: dict[str, Any]) -> tuple[Path, Path]:
    """Write ``results/NAME.json`` and ``results/NAME.md`` atomically; returns their paths."""
    from slimtorch.io.atomic import write_text

    json_path = write_text(RESULTS / f"{name}.json", json.dumps(result, indent=2, default=str) + "\n")
    md_path = write_text(RESULTS / f"{name}.md", to_markdown(name, result))
    return json_path, md_path


def main(name: str, run: Callable[[bool], dict[str, Any]]) -> dict[str, Any]:
    """Command-line entry of one benchmark script: ``python benchmarks/bench_x.py [--quick]``."""
    parser = argparse.ArgumentParser(description=f"benchmark {name}")
    parser.add_argument("--quick", action="store_true", help="small sizes and few rounds (a smoke run)")
    args = parser.parse_args()
    return execute(name, run, quick=args.quick)


def execute(name: str, run: Callable[[bool], dict[str, Any]], quick: bool) -> dict[str, Any]:
    """Run one benchmark, add the environment, write the files and print the markdown table.

    glibc's malloc thresholds are pinned before the run (``slimtorch.measure.allocator``, as every slimtorch
    timing does), so contenders do not depend on what ran before them in the process.
    """
    from slimtorch.measure.allocator import pin_allocator

    env = environment()
    env["allocator"] = pin_allocator()
    start = time.perf_counter()
    result = run(quick)
    result["environment"] = env
    result["quick"] = quick
    result["seconds"] = time.perf_counter() - start
    write(name, result)
    sys.stdout.write(to_markdown(name, result))
    return result


def ort_runner(model: torch.nn.Module, x: torch.Tensor, *, spinning: bool = True,
               dynamo: bool = True) -> Callable[[], Any]:
    """A zero-argument call running ``model`` exported to ONNX (in memory) in ONNX Runtime on ``x``.

    Intra-op threads match torch's. ``spinning=False`` keeps ONNX Runtime's idle workers from spinning, for
    timing it in one round-robin group with PyTorch contenders; ``dynamo=False`` uses the TorchScript exporter.
    """
    import io
    import warnings

    import onnxruntime as ort

    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            torch.onnx.export(model, (x,), dynamo=True, verbose=False).save(buffer)
        else:
            torch.onnx.export(model, (x,), buffer, dynamo=False)
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(buffer.getvalue(), options, providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: x.numpy()}
    return lambda: session.run(None, feed)


def compiled(model: torch.nn.Module, x: torch.Tensor) -> Callable[[torch.Tensor], Any] | None:
    """``torch.compile`` of a copy of ``model`` with inductor freezing (weights as constants: BN folded, oneDNN
    weights pre-packed), compiled for ``x``'s shape; None (with a warning) where compiling fails.

    The copy runs once eagerly first: a quantized model then has its weights packed and its kernel race
    settled, so inductor traces its integer kernels into the graph.
    """
    import torch._dynamo.config as dynamo_cfg
    import torch._inductor.config as cfg

    cfg.freezing = True
    # every compiled copy of the same classes counts against one recompile budget: past it, dynamo silently
    # falls back to eager, which would time eager code under a "compiled" label
    dynamo_cfg.cache_size_limit = dynamo_cfg.accumulated_cache_size_limit = 256
    try:
        twin = copy.deepcopy(model)
        with torch.no_grad():
            twin(x)
            fn = torch.compile(twin)
            fn(x)
        return fn
    except Exception as err:  # a peer that fails is reported, not fatal
        warnings.warn(f"torch.compile failed: {err}", stacklevel=2)
        return None


def time_per_runtime(fns: dict[str, Callable[[], Any]], runtimes: tuple[str, ...], *, blocks: int,
                     max_seconds: float, repeats: int = 10) -> dict[str, Any]:
    """Time contenders named ``"RUNTIME variant"`` one runtime at a time, each group in alternating blocks of
    ``repeats`` calls (``time_alternating``; per-call samples, so a noise burst is spread over the group).

    Groups stay apart because runtimes disturb each other: PyTorch's OpenMP workers keep spinning after a call
    and tax an ONNX Runtime session that runs next. Returns contender name -> ``Timing``.
    """
    from slimtorch.measure.latency import time_alternating

    timings: dict[str, Any] = {}
    for runtime in runtimes:
        group = {k: f for k, f in fns.items() if k.startswith(runtime + " ")}
        if group:
            timings.update(time_alternating(group, blocks=blocks, repeats=repeats, max_seconds=max_seconds))
    return timings


def torch_ao_fx(model: torch.nn.Module, calib: list[torch.Tensor]):
    """torch.ao's FX static int8 flow, x86 backend (eager quantized kernels), calibrated on ``calib``; or why not."""
    try:
        from torch.ao.quantization import get_default_qconfig_mapping
        from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

        torch.backends.quantized.engine = "x86"
        prepared = prepare_fx(copy.deepcopy(model).eval(), get_default_qconfig_mapping("x86"), (calib[0],))
        with torch.no_grad():
            for batch in calib:
                prepared(batch)
        return convert_fx(prepared)
    except Exception as err:
        return f"{type(err).__name__}: {str(err)[:120]}"


def pt2e_x86(model: torch.nn.Module, calib: list[torch.Tensor], x: torch.Tensor):
    """PT2E static int8: ``torch.export``, torchao's X86InductorQuantizer, calibrate, convert, then
    ``torch.compile`` with freezing (the path PyTorch documents for x86 int8); a call for ``x``'s shape, or why
    not."""
    try:
        import torch._inductor.config as inductor_config
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
        from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
            X86InductorQuantizer,
            get_default_x86_inductor_quantization_config,
        )

        quantizer = X86InductorQuantizer().set_global(get_default_x86_inductor_quantization_config())
        exported = torch.export.export(copy.deepcopy(model).eval(), (x,)).module()
        prepared = prepare_pt2e(exported, quantizer)
        # the exported graph has x's batch size: the same calibration images, regrouped (and repeated) to it
        pool, n = torch.cat(calib), x.shape[0]
        pool = pool.repeat(-(-n // len(pool)), 1, 1, 1)
        with torch.no_grad():
            for start in range(0, len(pool) - n + 1, n):
                prepared(pool[start:start + n])
        converted = convert_pt2e(prepared)
        inductor_config.freezing = True
        with torch.no_grad():
            fn = torch.compile(converted)
            fn(x)
        return fn
    except Exception as err:
        return f"{type(err).__name__}: {str(err)[:120]}"


def race(fns: dict, quick: bool) -> dict:
    """Per-call median ms of each contender (None entries skipped), timed in alternating blocks of 5 calls."""
    from slimtorch.measure.latency import time_alternating

    fns = {k: v for k, v in fns.items() if v is not None}
    with torch.no_grad():
        # alternating blocks of a few calls spread a noise burst over every contender (round-robin rounds of
        # 0.5 s let one burst hit one contender's round: the same contender moved by up to 40% between runs)
        t = time_alternating(fns, blocks=4 if quick else 12, repeats=5, warmup=2, max_seconds=5 if quick else 30)
    return {k: v.median_ms for k, v in t.items()}


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """Cosine similarity of two outputs, flattened."""
    return float(torch.nn.functional.cosine_similarity(a.flatten().float(), b.flatten().float(), 0))
