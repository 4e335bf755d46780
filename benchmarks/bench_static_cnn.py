"""Static int8 on torchvision CNNs: slimtorch's lowered uint8 graph next to eager and compiled fp32, slimtorch's
per-layer form, torch.ao's FX flow and PT2E, in one process.

ResNet-18, MobileNetV2 and EfficientNet-B0 as torchvision defines them (its initialization, BatchNorm statistics
estimated on 32 random images; no weights are downloaded), 224x224, batch 1 and 16, two threads. Every int8 contender is
calibrated on the same 8 batches of 4 images. Contenders, each timed in alternating blocks of 5 calls (per-call
medians):
- ``fp32 eager`` and ``fp32 compiled`` (``torch.compile`` with inductor freezing: BatchNorm folded, oneDNN
  weights pre-packed; the fastest float path here);
- ``slimtorch StaticQuant`` (lowered: uint8 between layers, activations and residual adds fused into oneDNN
  convolutions) and ``slimtorch StaticQuant per layer`` (``lower=False``: float between layers);
- ``torch.ao FX x86`` (``prepare_fx``/``convert_fx``, x86 backend: eager quantized kernels; deprecated, what users
  still pick) and ``PT2E x86 inductor, compiled`` (``torch.export``, torchao's X86InductorQuantizer,
  ``torch.compile`` with freezing: the path PyTorch documents for x86 int8).
Output agreement: cosine of each contender's logits against eager fp32 on the timed batch (random images), and
the fraction of rows whose top-1 class matches fp32's.
"""

from __future__ import annotations

import copy
import os
import sys

import torch
from torch import nn

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "tests", "conformance"))
import torchvision_guard  # noqa: E402

torchvision_guard.install()
import torchvision  # noqa: E402
from _harness import compiled, cosine, main, pt2e_x86, race, torch_ao_fx  # noqa: E402

import slimtorch as st  # noqa: E402
from slimtorch.summary import last_summary  # noqa: E402

MODELS = ("resnet18", "mobilenet_v2", "efficientnet_b0")


def _model(name: str) -> nn.Module:
    """The torchvision model with BatchNorm statistics estimated on random images: with the fresh 0 / 1 ones,
    EfficientNet-B0's activations shrink to 1e-12 by its head and every output is noise."""
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = None  # a plain average over the batches below
    with torch.no_grad():
        for _ in range(4):
            model(torch.randn(8, 3, 224, 224))
    return model.eval()


def _top1(ref: torch.Tensor, out: torch.Tensor) -> float:
    return float((ref.argmax(1) == out.argmax(1)).float().mean())


def run(quick: bool) -> dict:
    torch.set_num_threads(2)
    rows: list = []
    peers: dict = {}
    lowered_lines: dict = {}
    for name in MODELS[:1] if quick else MODELS:
        float_model = _model(name)
        calib = [torch.randn(4, 3, 224, 224, generator=torch.Generator().manual_seed(10 + i)) for i in range(8)]
        config = st.StaticQuant(calibration_batches=len(calib))
        sq = st.quantize(copy.deepcopy(float_model), config, data=calib)
        lowered_lines[name] = last_summary(sq).details["lowered"]
        sq_layers = st.quantize(copy.deepcopy(float_model), st.StaticQuant(calibration_batches=len(calib),
                                                                           lower=False), data=calib)
        fx = torch_ao_fx(float_model, calib)
        peers[f"{name} torch.ao FX x86"] = fx if isinstance(fx, str) else "ok"
        for batch in (1,) if quick else (1, 16):
            x = torch.randn(batch, 3, 224, 224, generator=torch.Generator().manual_seed(99))
            pt2e = None if quick else pt2e_x86(float_model, calib, x)
            peers[f"{name} PT2E batch {batch}"] = pt2e if isinstance(pt2e, str) else "ok"
            comp = None if quick else compiled(float_model, x)
            fns = {"fp32 eager": lambda x=x, m=float_model: m(x),
                   "fp32 compiled": None if comp is None else (lambda x=x, c=comp: c(x)),
                   "slimtorch StaticQuant": lambda x=x, m=sq: m(x),
                   "slimtorch StaticQuant per layer": lambda x=x, m=sq_layers: m(x),
                   "torch.ao FX x86": None if isinstance(fx, str) else (lambda x=x, m=fx: m(x)),
                   "PT2E x86 inductor, compiled": None if pt2e is None or isinstance(pt2e, str) else (
                       lambda x=x, m=pt2e: m(x))}
            with torch.no_grad():
                ref = float_model(x)
                agree = {k: (cosine(ref, f()), _top1(ref, f())) for k, f in fns.items()
                         if f is not None and not k.startswith("fp32")}
            ms = race(fns, quick)
            fastest_fp32 = min(v for k, v in ms.items() if k.startswith("fp32"))
            for k, v in ms.items():
                cos, top1 = agree.get(k, ("", ""))
                rows.append([name, batch, k, round(v, 3), round(ms["fp32 eager"] / v, 2), round(fastest_fp32 / v, 2),
                             round(ms.get("torch.ao FX x86", float("nan")) / v, 2),
                             round(ms.get("PT2E x86 inductor, compiled", float("nan")) / v, 2),
                             cos if cos == "" else round(cos, 5), top1 if top1 == "" else round(top1, 3)])
    notes = [f"{k}: {v['chained']} of {v['layers']} int8 layers take uint8 from the previous operator, "
             f"{v['adds']} residual adds fused; float inputs: {sorted(v['reasons'])}" for k, v in lowered_lines.items()]
    notes += [f"peer {k}: {v}" for k, v in peers.items() if v != "ok"]
    return {
        "title": "Static int8 on torchvision CNNs: lowered uint8 graph vs torch.ao FX and PT2E",
        "description": __doc__.strip(),
        "columns": ["model", "batch", "variant", "median ms", "x vs eager fp32", "x vs fastest fp32",
                    "x vs torch.ao FX", "x vs PT2E", "cosine vs fp32", "top-1 = fp32"],
        "rows": rows,
        "notes": notes,
        "data": {"lowered": lowered_lines, "peers": peers},
    }


if __name__ == "__main__":
    main("static_cnn", run)
