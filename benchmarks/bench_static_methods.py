"""Static int8 on hard models: cross-layer equalization, bias correction and AdaRound, each on its own and together,
next to torch.ao's FX flow (x86 backend) on the same model and calibration batches.

- zoo models trained on real data: fashion-mobilenet (MobileNetV2-style: depthwise convolutions, ReLU6,
  BatchNorm; Fashion-MNIST 28x28 from the Debian package dataset-fashion-mnist), digits-mobilenet (the same
  on sklearn digits, 16x16) and digits-cnn (ResNet-style); measured on the held-out test split: logits cosine
  against float (mean over samples, shown as 1 - cosine), top-1 agreement with float, accuracy;
- the conformance matrix's hardest static rows (torchvision/timm definitions, random weights, BatchNorm statistics
  from data, tests/conformance/models.py): output cosine against float on the example batch.
"""

from __future__ import annotations

import copy
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests" / "conformance"))

from _harness import main  # noqa: E402

import slimtorch as st  # noqa: E402
from slimtorch.graph.surgery import fold_batchnorms  # noqa: E402

ROWS = ("tv/mnasnet0_5", "tv/regnet_y_400mf", "tv/regnet_x_400mf", "timm/tf_efficientnet_b0")


def _variants(seconds: float) -> dict[str, st.StaticQuant]:
    return {
        "StaticQuant": st.StaticQuant(),
        "+ equalize": st.StaticQuant(equalize=True),
        "+ bias_correction": st.StaticQuant(bias_correction=True),
        "+ adaround": st.StaticQuant(adaround=True, adaround_seconds=seconds),
        "all three": st.StaticQuant(equalize=True, bias_correction=True, adaround=True, adaround_seconds=seconds),
    }


def _torch_ao(model: nn.Module, example: torch.Tensor, calib: list[torch.Tensor]) -> nn.Module:
    """torch.ao FX static int8, x86 backend (its default histogram observers), calibrated on the same batches."""
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    prepared = prepare_fx(model.eval(), get_default_qconfig_mapping("x86"), (example,))
    with torch.no_grad():
        for batch in calib:
            prepared(batch)
    return convert_fx(prepared)


def _compare(model: nn.Module, reference: torch.Tensor, x: torch.Tensor) -> tuple[float, float]:
    """(mean per-sample cosine of the outputs against ``reference``, top-1 agreement), on inputs ``x``."""
    with torch.no_grad():
        out = model(x)
    cos = float(F.cosine_similarity(out.flatten(1), reference.flatten(1), dim=1).mean())
    return cos, float((out.argmax(1) == reference.argmax(1)).float().mean())


def _cosine(model: nn.Module, reference: torch.Tensor, x: torch.Tensor) -> float:
    """Cosine of the whole output against ``reference`` (the conformance matrix's measure)."""
    with torch.no_grad():
        return float(F.cosine_similarity(model(x).flatten(), reference.flatten(), dim=0))


def _gap(cos: float) -> str:
    """``1 - cosine`` in scientific notation (cosines of good int8 models differ in the fourth decimal)."""
    return f"{1 - cos:.2e}"


def _depthwise_spread(model: nn.Module, example: torch.Tensor) -> float:
    """Median over depthwise convolutions (BatchNorm folded) of max/min per-output-channel weight range."""
    folded = copy.deepcopy(model).eval()
    fold_batchnorms(folded, example)
    spreads = []
    for m in folded.modules():
        if isinstance(m, nn.Conv2d) and m.groups > 1 and m.groups == m.in_channels:
            r = m.weight.detach().abs().flatten(1).amax(1)
            spreads.append(float(r.max() / r.min().clamp_min(1e-12)))
    return float(torch.tensor(spreads).median()) if spreads else float("nan")


def _zoo_rows(name: str, seconds: float, rows: list, notes: list) -> None:
    model, data = st.zoo.load(name)
    calib = [b[0] for _, b in zip(range(8), data.calibration, strict=False)]
    test = torch.cat([b[0] for b in data.test])
    with torch.no_grad():
        reference = model(test)
    base = data.evaluate(model)
    rows.append([name, "float32", "", "", round(100 * base, 2), ""])
    for label, config in _variants(seconds).items():
        started = time.perf_counter()
        q = st.quantize(copy.deepcopy(model), config, data=calib)
        took = time.perf_counter() - started
        cos, agree = _compare(q, reference, test)
        rows.append([name, f"slimtorch {label}", _gap(cos), round(100 * agree, 2), round(100 * data.evaluate(q), 2),
                     round(took, 1)])
    ao = _torch_ao(copy.deepcopy(model), calib[0], calib)
    cos, agree = _compare(ao, reference, test)
    rows.append([name, "torch.ao FX x86", _gap(cos), round(100 * agree, 2), round(100 * data.evaluate(ao), 2), ""])
    spread = _depthwise_spread(model, calib[0][:1])
    if spread == spread:  # not NaN: the model has depthwise layers
        equalized = copy.deepcopy(model).eval()
        fold_batchnorms(equalized, calib[0][:1])
        from slimtorch.quant.equalize import equalize

        equalize(equalized, calib[0][:1])
        notes.append(f"{name}: median max/min per-channel weight range of its depthwise convolutions (BatchNorm "
                     f"folded): {spread:.1f}x before equalization, {_depthwise_spread(equalized, calib[0][:1]):.1f}x "
                     "after.")


def _matrix_rows(names: tuple[str, ...], seconds: float, rows: list, notes: list) -> None:
    from models import ROWS as BUILDERS

    for name in names:
        model, example, calib = BUILDERS[name]()
        with torch.no_grad():
            reference = model(example)
        for label, config in _variants(seconds).items():
            started = time.perf_counter()
            try:
                q = st.quantize(copy.deepcopy(model), config, data=calib, example_inputs=example)
            except st.SlimError as err:
                rows.append([name, f"slimtorch {label}", f"{type(err).__name__}", "", "", ""])
                continue
            took = time.perf_counter() - started
            rows.append([name, f"slimtorch {label}", _gap(_cosine(q, reference, example)), "", "", round(took, 1)])
        try:
            ao = _torch_ao(copy.deepcopy(model), example, calib)
            rows.append([name, "torch.ao FX x86", _gap(_cosine(ao, reference, example)), "", "", ""])
        except Exception as err:  # noqa: BLE001 - a peer that cannot trace the model is a row, not a crash
            rows.append([name, "torch.ao FX x86", f"fails: {type(err).__name__}", "", "", ""])


def run(quick: bool) -> dict:
    torch.manual_seed(0)
    seconds = 5.0 if quick else 30.0
    rows: list = []
    notes: list = []
    for name in ("digits-mobilenet",) if quick else ("fashion-mobilenet", "digits-mobilenet", "digits-cnn"):
        _zoo_rows(name, seconds, rows, notes)
    _matrix_rows(ROWS[:1] if quick else ROWS, seconds, rows, notes)
    notes += [
        f"AdaRound: adaround_seconds={seconds:g} for all layers of a model together (at most 500 steps per layer).",
        "Each variant quantizes a fresh copy of the float model on the same calibration batches (8 batches of the "
        "zoo's calibration split; the matrix rows' own 2 batches).",
        "Matrix rows: random weights with BatchNorm statistics from data (tests/conformance/models.py), cosine of the "
        "whole output on the example batch (the matrix's measure); their outputs are chaotic, so it measures how well "
        "each method keeps a hypersensitive network, not task accuracy.",
    ]
    return {
        "title": "Static int8 on hard models: equalization, bias correction, AdaRound vs torch.ao FX",
        "description": __doc__.strip().splitlines()[0],
        "columns": ["model", "variant", "1 - cosine vs float", "top-1 agreement %", "accuracy %", "quantize s"],
        "rows": rows,
        "notes": notes,
        "data": {"adaround_seconds": seconds, "rows": list(ROWS)},
    }


if __name__ == "__main__":
    main("static_methods", run)
