"""Does low-rank speed follow FLOPs? A BERT-base feed-forward block (768 -> 3072 -> 768) at rank 25%.

Dense and factorized (``st.decompose(..., st.LowRank(rank_ratio=0.25))``) blocks are timed round-robin in one
process, in eager PyTorch, compiled with inductor freezing (oneDNN fp32) and in ONNX Runtime.
"""

from __future__ import annotations

import copy
import io
import os
import sys
import warnings
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import main  # noqa: E402

import slimtorch as st  # noqa: E402
from slimtorch.measure.flops import count_flops  # noqa: E402
from slimtorch.measure.latency import time_interleaved  # noqa: E402


def _block() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(768, 3072), nn.GELU(), nn.Linear(3072, 768)).eval()


def _compiled(model: nn.Module, x: torch.Tensor):
    import torch._inductor.config as inductor_config

    inductor_config.freezing = True  # weights constant-folded and prepacked for oneDNN
    fn = torch.compile(model)
    with torch.inference_mode():
        fn(x)
    return lambda: fn(x)


def _ort(model: nn.Module, x: torch.Tensor):
    import onnxruntime as ort

    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(model, (x,), dynamo=True, verbose=False)
        program.save(buffer)
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    session = ort.InferenceSession(buffer.getvalue(), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    feed = {name: x.numpy()}
    return lambda: session.run(None, feed)


def run(quick: bool) -> dict:
    dense = _block()
    lowrank = st.decompose(copy.deepcopy(dense), st.LowRank(rank_ratio=0.25, keep_head=False))
    shapes = [(1, 128)] if quick else [(1, 128), (8, 128), (1, 1)]
    rows, raw = [], {}
    for batch, tokens in shapes:
        x = torch.randn(batch, tokens, 768)
        flops_dense, flops_lowrank = count_flops(dense, x), count_flops(lowrank, x)
        with torch.inference_mode():
            err = float((lowrank(x) - dense(x)).norm() / dense(x).norm())
        fns = {"eager dense": lambda x=x: dense(x), "eager rank 25%": lambda x=x: lowrank(x)}
        fns["ORT dense"], fns["ORT rank 25%"] = _ort(dense, x), _ort(lowrank, x)
        if not quick:
            fns["compiled dense"] = _compiled(copy.deepcopy(dense), x)
            torch._dynamo.reset()
            fns["compiled rank 25%"] = _compiled(copy.deepcopy(lowrank), x)
        timings = time_interleaved(fns, rounds=3 if quick else 7, round_seconds=0.2 if quick else 0.4)
        ms = {k: t.median_ms for k, t in timings.items()}
        fastest_dense = min(v for k, v in ms.items() if "dense" in k)
        raw[f"{batch}x{tokens}"] = {k: t.samples_ms for k, t in timings.items()}
        for name, value in ms.items():
            is_lowrank = "rank" in name
            # per-round ratio against the same runtime's dense block, then the median: robust to load drift
            dense_samples = timings[name.replace("rank 25%", "dense")].samples_ms
            ratios = sorted(d / v for d, v in zip(dense_samples, timings[name].samples_ms, strict=True))
            rows.append([f"{batch} x {tokens}", name, (flops_lowrank if is_lowrank else flops_dense) / 1e6, value,
                         ms["eager dense"] / value, fastest_dense / value, ratios[len(ratios) // 2],
                         err if is_lowrank else 0.0])
    main_rows = [r for r in rows if r[0] == "1 x 128" and "rank" in r[1]]
    notes = [
        f"Rank 25% is rank 192 for both layers: {flops_dense / flops_lowrank:.2f}x fewer FLOPs than dense "
        "(768x3072 weights become 768x192 + 192x3072).",
        "Speedup at batch 1 x 128 tokens against the dense block on the same runtime: "
        + ", ".join(f"{r[1]} {r[6]:.2f}x" for r in main_rows) + " (target: at least 1.8x).",
        "The weights are random, so the relative output error (last column) is large: a trained layer's spectrum "
        "decays and keeps far more at the same rank. This benchmark is about speed only.",
    ]
    notes.append(f"Load average after the run: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores (other jobs share "
                 "them; the per-round ratios are robust to slow drift, not to bursts within a round).")
    if quick:
        notes.append("Quick run: eager and ONNX Runtime only; the full run adds torch.compile (inductor, freezing).")
    return {
        "title": "Low-rank speed: BERT-base FFN block 768-3072-768 at rank 25%",
        "description": "nn.Sequential(Linear(768, 3072), GELU, Linear(3072, 768)) with random weights against the "
        "same block after st.decompose(model, st.LowRank(rank_ratio=0.25, keep_head=False)); timed round-robin "
        "(slimtorch.measure.latency.time_interleaved) on inputs of shape (batch, tokens, 768).",
        "columns": ["batch x tokens", "variant", "MFLOPs", "median ms", "speedup vs eager dense",
                    "speedup vs fastest dense",
                    "speedup vs dense, same runtime (median of per-round ratios)", "relative output error"],
        "rows": rows,
        "notes": notes,
        "data": {"samples_ms": raw, "rank": lowrank[0].rank},
    }


if __name__ == "__main__":
    main("lowrank_speed", run)
