"""Accuracy against parameter reduction for low-rank decomposition on the zoo models, with and without
fine-tuning, for each way of choosing ranks (one energy fraction, one rank ratio, measured sensitivity, and
sensitivity with data-aware factors)."""

from __future__ import annotations

import copy
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import main  # noqa: E402

import slimtorch as st  # noqa: E402
from slimtorch.measure.flops import count_flops  # noqa: E402
from slimtorch.measure.size import count_params  # noqa: E402
from slimtorch.summary import last_summary  # noqa: E402
from slimtorch.train.finetune import frozen_copy  # noqa: E402

VARIANTS = [("energy", False), ("uniform", False), ("sensitivity", False), ("sensitivity", True)]


def run(quick: bool) -> dict:
    models = ["digits-mlp"] if quick else ["digits-mlp", "digits-cnn"]
    targets = [2.0] if quick else [2.0, 3.0, 4.0]
    epochs = 1 if quick else 2
    rows, notes, worst_ft_at_2x = [], [], {}
    for name in models:
        original, data = st.zoo.load(name)
        x = data.example_inputs(1)
        base_acc = data.evaluate(original)
        base_params, base_flops = count_params(original)[0], count_flops(original, x)
        for target in targets:
            for allocation, aware in VARIANTS:
                model = copy.deepcopy(original)
                start = time.perf_counter()
                config = st.LowRank(target=target, target_scope="layers", allocation=allocation, data_aware=aware)
                st.decompose(model, config, data=data)
                seconds = time.perf_counter() - start
                decided = [r for r in last_summary(model).details["layers"] if "params_before" in r]
                before = sum(r["params_before"] for r in decided)
                after = sum(r.get("params_after", r["params_before"]) for r in decided)
                n_dec = sum(r["status"] == "decomposed" for r in decided)
                acc = data.evaluate(model)
                st.finetune(model, data, teacher=frozen_copy(original), config=st.Finetune(epochs=epochs))
                acc_ft = data.evaluate(model)
                if target == 2.0:
                    worst_ft_at_2x[name] = min(worst_ft_at_2x.get(name, 1.0), acc_ft - base_acc)
                rows.append([name, f"{target:g}x", allocation + (" + data-aware" if aware else ""),
                             f"{n_dec}/{len(decided)}", before / after, base_params / count_params(model)[0],
                             base_flops / count_flops(model, x), 100 * base_acc, 100 * acc, 100 * acc_ft,
                             100 * (acc_ft - base_acc), seconds])
    for name, drop in worst_ft_at_2x.items():
        verdict = "met" if drop >= -0.01 else "NOT met"
        notes.append(f"{name}: at 2x fewer parameters in the decomposable layers, after {epochs} epoch(s) of "
                     f"fine-tuning with distillation, the worst variant is {100 * drop:+.2f} points from the "
                     f"original ({verdict}: within 1 point).")
    notes.append("'layers reduction' is over all layers the config could factorize (every Linear/Conv2d but the "
                 "classifier head); layers the allocation keeps dense count at their full size.")
    notes.append("energy: one spectral-energy fraction for all layers; uniform: one rank ratio for all layers; "
                 "sensitivity: per-layer model-output error on 8 calibration batches for each candidate rank, "
                 "then the least total error within budget; data-aware: factors weighted by the inputs' second "
                 "moments (output error, not weight error).")
    return {
        "title": "Low-rank decomposition: accuracy vs parameter reduction on the zoo models",
        "description": "st.decompose(model, st.LowRank(target=T, target_scope='layers', allocation=A, "
        "data_aware=D), data=zoo data), then st.finetune(model, data, teacher=original, epochs=E). Linear layers "
        "use SVD, 3x3 convolutions Tucker-2 (method='auto'). Accuracy on the zoo test split, in percent.",
        "columns": ["model", "target", "ranks chosen by", "layers decomposed", "layers reduction", "model params "
                    "reduction", "model FLOPs reduction", "accuracy %", "no fine-tuning %", f"fine-tuned ({epochs} "
                    "ep) %", "fine-tuned - original (points)", "decompose s"],
        "rows": rows,
        "notes": notes,
        "data": {"finetune": {"epochs": epochs}},
    }


if __name__ == "__main__":
    main("lowrank_accuracy", run)
