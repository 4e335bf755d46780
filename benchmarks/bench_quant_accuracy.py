"""Quantization accuracy on the zoo models (test split) and output cosine on a BERT-base-width encoder.

- digits-cnn: static int8 with each observer, and after StructuredPruning(ratio=0.5) (the demo path);
- digits-mlp: weight-only int4 group 32 post-training, then QAT (prepare_qat -> finetune with distillation
  -> convert); dynamic int8;
- encoder (d=768, 12 heads, 128 tokens): dynamic int8 output cosine against float.
"""

from __future__ import annotations

import copy
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
from _harness import main  # noqa: E402
from bench_quant_speed import Encoder  # noqa: E402

import slimtorch as st  # noqa: E402


def run(quick: bool) -> dict:
    torch.manual_seed(0)
    rows = []
    cnn, cdata = st.zoo.load("digits-cnn")
    base = cdata.evaluate(cnn)
    rows.append(["digits-cnn", "float32", round(100 * base, 2), 0.0])
    for observer in ("minmax",) if quick else ("minmax", "moving_average", "percentile", "mse", "entropy"):
        q = st.quantize(copy.deepcopy(cnn), st.StaticQuant(observer=observer), data=cdata.calibration)
        acc = cdata.evaluate(q)
        rows.append(["digits-cnn", f"StaticQuant int8 ({observer})", round(100 * acc, 2),
                     round(100 * (acc - base), 2)])
    pruned = st.prune(copy.deepcopy(cnn), st.StructuredPruning(ratio=0.5), data=cdata.calibration,
                      example_inputs=cdata.example_inputs(2))
    pbase = cdata.evaluate(pruned)
    pq = st.quantize(pruned, st.StaticQuant(), data=cdata.calibration)
    rows.append(["digits-cnn pruned 50% (BN recalibrated)", "float32", round(100 * pbase, 2), 0.0])
    rows.append(["digits-cnn pruned 50% (BN recalibrated)", "StaticQuant int8", round(100 * cdata.evaluate(pq), 2),
                 round(100 * (cdata.evaluate(pq) - pbase), 2)])
    mlp, mdata = st.zoo.load("digits-mlp")
    mbase = mdata.evaluate(mlp)
    rows.append(["digits-mlp", "float32", round(100 * mbase, 2), 0.0])
    cfg = st.WeightOnlyQuant(bits=4, group_size=32)
    ptq = mdata.evaluate(st.quantize(copy.deepcopy(mlp), cfg))
    rows.append(["digits-mlp", "WeightOnlyQuant int4 g32 (PTQ)", round(100 * ptq, 2), round(100 * (ptq - mbase), 2)])
    m = st.prepare_qat(copy.deepcopy(mlp), cfg)
    st.finetune(m, mdata, teacher=mlp, epochs=1 if quick else 2)
    qat = mdata.evaluate(st.convert(m))
    rows.append(["digits-mlp", "WeightOnlyQuant int4 g32 (QAT, KD)", round(100 * qat, 2),
                 round(100 * (qat - mbase), 2)])
    dyn = mdata.evaluate(st.quantize(copy.deepcopy(mlp), st.DynamicQuant()))
    rows.append(["digits-mlp", "DynamicQuant int8", round(100 * dyn, 2), round(100 * (dyn - mbase), 2)])
    enc = Encoder(layers=2).eval()
    x = torch.randn(2, 128, 768)
    with torch.no_grad():
        ref = enc(x)
        out = st.quantize(copy.deepcopy(enc), st.DynamicQuant())(x)
    cos = float(torch.nn.functional.cosine_similarity(ref.flatten(), out.flatten(), 0))
    notes = [f"encoder d768 (2 layers, 128 tokens, batch 2) dynamic int8 output cosine vs float: {cos:.6f} "
             f"(target >= 0.999: {'met' if cos >= 0.999 else 'NOT met'})",
             f"static int8 on the zoo CNN: {rows[1][3]:+.2f} points (target within 0.5)",
             f"int4 g32 on the zoo MLP: PTQ {100 * (ptq - mbase):+.2f}, QAT {100 * (qat - mbase):+.2f} points "
             f"(targets: within 1 point; QAT >= PTQ: {'met' if qat >= ptq else 'NOT met'})"]
    return {
        "title": "Quantization accuracy: zoo CNN and MLP (test accuracy %), encoder output cosine",
        "description": __doc__.strip(),
        "columns": ["model", "variant", "accuracy %", "change (points)"],
        "rows": rows,
        "notes": notes,
        "data": {"encoder_cosine": cos},
    }


if __name__ == "__main__":
    main("quant_accuracy", run)
