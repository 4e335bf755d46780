"""The conformance matrix: every compression family (column) on every architecture (row), through the public API.

A cell builds its row's model, applies its column's step and checks, in order:

1. the step: it runs, or raises ``UnsupportedModelError`` and leaves the model exactly as it was
   ("unsupported"); any other ``SlimError`` is a "fail", any other exception a "crash";
2. the result: the output keeps its shape and meets the column's check (agreement with float within the
   family's tolerance, or for pruning the sparsity / pattern / size the config asks for);
3. ``st.save`` then ``st.load`` into a freshly built original model: outputs exactly equal;
4. ``st.export_onnx(..., check=True)``: exported and agreeing in ONNX Runtime.

``python tests/conformance/matrix.py ROW [COLUMN ...] --out FILE`` runs one row and appends one JSON line per
cell to FILE (the benchmark runs each row in its own process this way). ``ROWS`` live in ``models.py``.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import torchvision_guard  # noqa: E402

torchvision_guard.install()

from models import ROWS, Built  # noqa: E402

import slimtorch as st  # noqa: E402

Status = str  # "pass" | "unsupported" | "fail" | "crash"

#: the representative subset CI runs (tests/conformance/test_conformance.py, ``bench_conformance --quick``):
#: a torchvision CNN, a timm TensorFlow port with same-padding convs, a ViT, an HF encoder and an HF decoder
CI_ROWS = ("tv/resnet18", "timm/tf_mobilenetv3_small_minimal_100", "tv/vit-small", "hf/bert", "hf/llama")


@dataclasses.dataclass
class Cell:
    """One cell's outcome.

    Attributes:
        row, column: the model and the family.
        status: "pass", "unsupported" (``UnsupportedModelError``, model untouched), "fail" (another ``SlimError``
            or a check missed, with the numbers) or "crash" (any other exception).
        phase: where it stopped: "build", "step", "check", "roundtrip", "onnx" or "done" ("done" without an
            "onnx" entry in ``seconds``: the ONNX phase was not run for this cell).
        reason: the error type and message, or the check that was missed.
        frame: the innermost slimtorch frame of the error ("file:line function"), when there is one.
        metrics: the numbers measured (cosines, sparsities, parameter counts, ...).
        seconds: time per phase.
    """

    row: str
    column: str
    status: Status = "pass"
    phase: str = "build"
    reason: str = ""
    frame: str = ""
    metrics: dict[str, Any] = dataclasses.field(default_factory=dict)
    seconds: dict[str, float] = dataclasses.field(default_factory=dict)


class CheckFailed(Exception):
    """A column's check was missed (the message has the numbers)."""


# ----------------------------------------------------------------------------------------------- model outputs
def run_model(model: nn.Module, inputs: Any) -> Any:
    with torch.no_grad():
        return model(**inputs) if isinstance(inputs, dict) else model(inputs)


def main_output(out: Any) -> torch.Tensor:
    """The output the checks compare: a tensor, a model output's logits, or its first tensor."""
    if isinstance(out, torch.Tensor):
        return out
    for key in ("logits", "logits_per_image", "last_hidden_state"):
        value = getattr(out, key, None)
        if isinstance(value, torch.Tensor):
            return value
    leaves = [t for t in torch.utils._pytree.tree_leaves(out) if isinstance(t, torch.Tensor)]
    return leaves[0]


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """Smallest per-sample cosine similarity (1 = same direction; two all-zero samples agree)."""
    a2, b2 = a.double().reshape(len(a), -1), b.double().reshape(len(b), -1)
    norms = a2.norm(dim=1) * b2.norm(dim=1)
    # no epsilon floor: random-weight models can have logits of 1e-5, whose norms' product is below any eps
    cos = torch.where(norms > 0, (a2 * b2).sum(1) / norms.clamp_min(1e-300), (a2 == b2).all(1).double())
    return float(cos.min())


def rel_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out.double() - ref.double()).abs().max() / ref.double().abs().max().clamp_min(1e-12))


# ----------------------------------------------------------------------------------------------- checks
def _weights(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """Weights of the layers the families touch (Linear, Conv, HF Conv1D), as ``[out, in, ...]``: Hugging Face's
    ``Conv1D`` (GPT-2) stores its weight as ``[in, out]`` (it computes ``x @ W``), so it is transposed here and
    an N:M pattern along its inputs runs along dim 1 like every other layer's."""
    out = []
    for name, m in model.named_modules():
        conv1d = type(m).__name__ == "Conv1D"
        if isinstance(m, nn.Linear | nn.Conv1d | nn.Conv2d) or conv1d:
            w = getattr(m, "weight", None)
            if isinstance(w, torch.Tensor) and w.dim() >= 2:
                out.append((name, w.detach().t() if conv1d and w.dim() == 2 else w.detach()))
    return out


def params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def agree(cos_min: float, rel_max: float | None = None) -> Callable[[dict], None]:
    """A check that the compressed output agrees with float: min per-sample cosine (and max relative error)."""

    def check(ctx: dict) -> None:
        out, ref = ctx["out"], ctx["ref"]
        ctx["metrics"].update(cosine=cosine(out, ref), rel_error=rel_error(out, ref))
        if ctx["metrics"]["cosine"] < cos_min or (rel_max is not None and ctx["metrics"]["rel_error"] > rel_max):
            raise CheckFailed(f"output cosine {ctx['metrics']['cosine']:.5f} (>= {cos_min}), rel error "
                              f"{ctx['metrics']['rel_error']:.4f}" + (f" (<= {rel_max})" if rel_max else ""))
    return check


@dataclasses.dataclass(frozen=True)
class Peer:
    """A peer's implementation of a column on the same model: ``run(float_model, ctx)`` changes the float copy in
    place and returns its output on the example and the reference that output is compared with."""

    name: str
    run: Callable[[nn.Module, dict], tuple[torch.Tensor, torch.Tensor]]


def _torch_ao(qat: bool) -> Peer:
    """torch.ao's FX int8 flow (x86 backend) with the same calibration batches: static post-training
    quantization (compared with float), or QAT prepare (observers fed in training mode) and convert (compared with
    its fake-quant model)."""

    def run(model: nn.Module, ctx: dict) -> tuple[torch.Tensor, torch.Tensor]:
        from torch.ao.quantization import get_default_qat_qconfig_mapping, get_default_qconfig_mapping
        from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx, prepare_qat_fx

        example = ctx["example"]
        if qat:
            prepared = prepare_qat_fx(model.train(), get_default_qat_qconfig_mapping("x86"), (example,))
        else:
            before = main_output(run_model(model, example)).clone()
            prepared = prepare_fx(model.eval(), get_default_qconfig_mapping("x86"), (example,))
        for batch in ctx["calib"]:
            run_model(prepared, batch)
        prepared.eval()
        if qat:
            before = main_output(run_model(prepared, example)).clone()
        return main_output(run_model(convert_fx(prepared), example)), before

    return Peer("torch.ao FX x86" + (" QAT" if qat else ""), run)


def _quantized_names(model: nn.Module) -> set[str]:
    from slimtorch.quant.formats import QuantConv2d
    from slimtorch.quant.modules import QuantLinear

    return {name for name, m in model.named_modules() if isinstance(m, QuantLinear | QuantConv2d)}


def _torchao_int8_weight_only(model: nn.Module, ctx: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """torchao's ``Int8WeightOnlyConfig`` on the Linear layers slimtorch quantized (compared with float)."""
    from torchao.quantization import Int8WeightOnlyConfig, quantize_

    before = main_output(run_model(model.eval(), ctx["example"])).clone()
    names = _quantized_names(ctx["model"])
    quantize_(model, Int8WeightOnlyConfig(), filter_fn=lambda m, fqn: isinstance(m, nn.Linear) and fqn in names)
    return main_output(run_model(model, ctx["example"])), before


def _torchao_int4_numerics(group: int) -> Callable[[nn.Module, dict], tuple[torch.Tensor, torch.Tensor]]:
    """torchao's int4 weight-only numbers (asymmetric uint4 groups of ``group`` inputs, its public
    ``choose_qparams_affine`` / ``quantize_affine`` / ``dequantize_affine``) on the Linear layers slimtorch
    quantized, as float weights: torchao 0.18's int4 kernels need CUDA or the mslk package, not on this CPU."""

    def run(model: nn.Module, ctx: dict) -> tuple[torch.Tensor, torch.Tensor]:
        from torchao.quantization.quant_primitives import (
            MappingType,
            choose_qparams_affine,
            dequantize_affine,
            quantize_affine,
        )

        def rtn(w: torch.Tensor) -> torch.Tensor:
            block = (1, w.shape[1])
            scale, zp = choose_qparams_affine(w, MappingType.ASYMMETRIC, block, torch.uint8, 0, 15)
            q = quantize_affine(w, block, scale, zp, torch.uint8, 0, 15)
            return dequantize_affine(q, block, scale, zp, torch.uint8, 0, 15, output_dtype=w.dtype)

        before = main_output(run_model(model.eval(), ctx["example"])).clone()
        names = _quantized_names(ctx["model"])
        with torch.no_grad():
            for name, m in model.named_modules():
                if isinstance(m, nn.Linear) and name in names:  # the shorter last group, as slimtorch's
                    m.weight.copy_(torch.cat([rtn(w) for w in m.weight.split(group, dim=1)], dim=1))
        return main_output(run_model(model, ctx["example"])), before

    return run


def agree_or_peer(cos_min: float, margin: float, peer: Peer, qat: bool = False) -> Callable[[dict], None]:
    """The output agrees with its reference (float; for QAT the prepared fake-quant model) within ``cos_min``
    cosine, or within ``margin`` of what ``peer`` reaches on the same model (and calibration): random deep
    networks amplify rounding layer after layer (per-layer errors of 1e-4 become a few percent over 50-80
    layers), and the peer measures how much of a miss that is. No peer result (it refuses the model): ``cos_min``
    alone."""

    def check(ctx: dict) -> None:
        ref = ctx["applied"][1] if qat else ctx["ref"]
        name = "cosine_vs_fakequant" if qat else "cosine"
        ctx["metrics"].update({name: cosine(ctx["out"], ref), "rel_error": rel_error(ctx["out"], ref)})
        if qat:
            ctx["metrics"]["cosine"] = cosine(ctx["out"], ctx["ref"])
        if ctx["metrics"][name] >= cos_min:
            return
        try:
            peer_out, peer_ref = peer.run(ctx["applied"][0], ctx)
            result = cosine(peer_out, peer_ref)
        except Exception as err:  # torch.ao's FX tracer refuses many models
            ctx["metrics"]["peer"] = f"{peer.name}: {type(err).__name__}: {str(err).splitlines()[0][:120]}"
            result = None
        else:
            ctx["metrics"]["peer"] = peer.name
            ctx["metrics"]["peer_" + name] = result
        if result is None or ctx["metrics"][name] < result - margin:
            versus = "converted vs fake-quant" if qat else "output vs float"
            raise CheckFailed(f"{versus}: cosine {ctx['metrics'][name]:.5f} (>= {cos_min}, or >= {peer.name}'s "
                              f"{'n/a' if result is None else f'{result:.5f}'} - {margin})")
    return check


def quantized_layers(kind: str) -> Callable[[dict], None]:
    """Integer layers really are there (a step that quantized nothing is not a pass)."""

    def check(ctx: dict) -> None:
        from slimtorch.quant.binary.modules import BinaryConv2d, BinaryLinear
        from slimtorch.quant.formats import QuantConv2d
        from slimtorch.quant.modules import QuantLinear

        types = (QuantLinear, QuantConv2d) if kind == "int" else (BinaryLinear, BinaryConv2d)
        layers = [m for m in ctx["model"].modules() if isinstance(m, types)]
        ctx["metrics"]["quantized_layers"] = len(layers)
        if not layers:
            raise CheckFailed(f"no {kind} layer in the model after the step")
        if kind != "int":
            levels = 2 if ctx["column"] == "binary" else 3
            worst = max(int(torch.unique(w).numel()) for m in layers for w in m.dequantized_weight().flatten(1))
            ctx["metrics"]["max_levels_per_row"] = worst
            if worst > levels:
                raise CheckFailed(f"a {ctx['column']} layer has {worst} distinct weight values in one output row "
                                  f"(at most {levels})")
    return check


def all_of(*checks: Callable[[dict], None]) -> Callable[[dict], None]:
    def check(ctx: dict) -> None:
        for c in checks:
            c(ctx)
    return check


def sparsity_at_least(target: float) -> Callable[[dict], None]:
    def check(ctx: dict) -> None:
        ws = _weights(ctx["model"])
        zeros, total = sum(int((w == 0).sum()) for _, w in ws), sum(w.numel() for _, w in ws)
        ctx["metrics"]["sparsity"] = zeros / max(total, 1)
        if ctx["metrics"]["sparsity"] < target:
            raise CheckFailed(f"weight sparsity {ctx['metrics']['sparsity']:.3f} of Linear/Conv weights (>= {target})")
    return check


def nm_pattern(n: int, m: int) -> Callable[[dict], None]:
    """Every layer with pruned weights holds the n:m pattern along its inputs; at least one layer is pruned."""

    def holds(w: torch.Tensor) -> bool:
        for rows in (w.flatten(1), w.permute(0, *range(2, w.dim()), 1).flatten(1) if w.dim() > 2 else None):
            if rows is not None and rows.shape[1] % m == 0:
                if bool(((rows.reshape(rows.shape[0], -1, m) != 0).sum(-1) <= n).all()):
                    return True
        return False

    def check(ctx: dict) -> None:
        pruned = [(name, w) for name, w in _weights(ctx["model"]) if float((w == 0).float().mean()) >= 0.25]
        broken = [name for name, w in pruned if not holds(w)]
        ctx["metrics"].update(nm_layers=len(pruned), nm_broken=broken[:5])
        if not pruned or broken:
            raise CheckFailed(f"{n}:{m} pattern: {len(pruned)} pruned layers, broken in {broken[:5]}")
    return check


def fewer_params(at_most: float) -> Callable[[dict], None]:
    def check(ctx: dict) -> None:
        ratio = params(ctx["model"]) / ctx["params_before"]
        ctx["metrics"]["params_ratio"] = ratio
        if ratio > at_most:
            raise CheckFailed(f"parameters kept {ratio:.3f} of the original (<= {at_most})")
    return check


# ----------------------------------------------------------------------------------------------- columns
@dataclasses.dataclass(frozen=True)
class Column:
    """A family: how to apply it (public API only), what it must achieve, and the tolerance in words."""

    apply: Callable[[nn.Module, Any, list[Any]], Any]
    check: Callable[[dict], None]
    tolerance: str


def _quantize(config: st.Config) -> Callable[[nn.Module, Any, list[Any]], tuple[nn.Module, None]]:
    """``st.quantize`` with ``config``; returns a float copy for the peer comparison (``agree_or_peer``)."""

    def apply(model: nn.Module, example: Any, calib: list[Any]) -> tuple[nn.Module, None]:
        float_copy = copy.deepcopy(model)
        st.quantize(model, config, data=calib, example_inputs=example)
        return float_copy, None
    return apply


def _qat(model: nn.Module, example: Any, calib: list[Any]) -> tuple[nn.Module, torch.Tensor]:
    """QAT prepare, observers fed in training mode, convert; returns a float copy for the peer comparison and the
    prepared fake-quant model's output on ``example``."""
    float_copy = copy.deepcopy(model)
    st.prepare_qat(model, st.StaticQuant(), data=calib)
    model.train()
    for batch in calib:  # observers see the data in training mode, as during QAT
        run_model(model, batch)
    model.eval()
    prepared = main_output(run_model(model, example)).clone()
    st.convert(model)
    return float_copy, prepared


COLUMNS: dict[str, Column] = {
    "unstructured": Column(lambda m, x, c: st.prune(m, st.UnstructuredPruning(sparsity=0.5), data=c,
                                                    example_inputs=x),
                           sparsity_at_least(0.4), "runs; >= 40% of Linear/Conv weights zero (50% asked, head kept)"),
    "nm_2_4": Column(lambda m, x, c: st.prune(m, st.NMPruning(n=2, m=4), data=c, example_inputs=x),
                     nm_pattern(2, 4), "runs; every pruned layer holds 2:4 along its inputs"),
    "structured": Column(lambda m, x, c: st.prune(m, st.StructuredPruning(ratio=0.5), data=c, example_inputs=x),
                         fewer_params(0.9), "runs; <= 90% of the parameters left (half the channels asked)"),
    "layer_removal": Column(lambda m, x, c: st.prune(m, st.LayerPruning(num_layers=1), data=c, example_inputs=x),
                            fewer_params(0.9999), "runs; one block removed (fewer parameters)"),
    "lowrank": Column(lambda m, x, c: st.decompose(m, st.LowRank(energy=0.99), data=c, example_inputs=x),
                      agree(0.95), "output cosine >= 0.95 vs float at 99% energy"),
    "static_int8": Column(_quantize(st.StaticQuant()), all_of(quantized_layers("int"),
                                                               agree_or_peer(0.98, 0.02, _torch_ao(qat=False))),
                          "output cosine >= 0.98 vs float, or within 0.02 of torch.ao FX x86 static int8's on the "
                          "same model and calibration"),
    "static_int8_hard": Column(_quantize(st.StaticQuant(equalize=True, bias_correction=True, adaround=True,
                                                       adaround_seconds=3)),
                               all_of(quantized_layers("int"), agree_or_peer(0.98, 0.02, _torch_ao(qat=False))),
                               "with equalization, bias correction and AdaRound (3 s): as static_int8"),
    "dynamic_int8": Column(lambda m, x, c: st.quantize(m, st.DynamicQuant(), data=c, example_inputs=x),
                           all_of(quantized_layers("int"), agree(0.99)), "output cosine >= 0.99 vs float"),
    "weight_int8": Column(_quantize(st.WeightOnlyQuant(bits=8, group_size=None)),
                          all_of(quantized_layers("int"),
                                 agree_or_peer(0.999, 0.001,
                                               Peer("torchao Int8WeightOnly", _torchao_int8_weight_only))),
                          "output cosine >= 0.999 vs float, or within 0.001 of torchao's Int8WeightOnlyConfig on the "
                          "same layers"),
    "weight_int4": Column(_quantize(st.WeightOnlyQuant(bits=4, group_size=32)),
                          all_of(quantized_layers("int"),
                                 agree_or_peer(0.95, 0.02, Peer("torchao int4 (asymmetric, group 32)",
                                                                _torchao_int4_numerics(32)))),
                          "output cosine >= 0.95 vs float (group 32), or within 0.02 of torchao's int4 weight-only "
                          "numbers (asymmetric groups of 32) on the same layers"),
    "binary": Column(lambda m, x, c: st.quantize(m, st.Binarize(), data=c, example_inputs=x),
                     quantized_layers("binary"), "runs; binarized layers hold 2 values per output row"),
    "ternary": Column(lambda m, x, c: st.quantize(m, st.Ternarize(), data=c, example_inputs=x),
                      quantized_layers("binary"), "runs; ternarized layers hold <= 3 values per output row"),
    "qat_static": Column(_qat, all_of(quantized_layers("int"),
                                      agree_or_peer(0.99, 0.02, _torch_ao(qat=True), qat=True)),
                         "converted output cosine >= 0.99 vs the prepared fake-quant model, or within 0.02 of "
                         "torch.ao FX x86 QAT's (converted vs its fake-quant model) on the same model and data"),
}


# ----------------------------------------------------------------------------------------------- one cell
def _frame(err: BaseException) -> str:
    """The innermost slimtorch frame of ``err``'s traceback (or of its cause's); failing that, the innermost
    frame outside this file, marked "outside slimtorch"."""
    seen, fallback = err, ""
    while seen is not None:
        tb = traceback.extract_tb(seen.__traceback__)
        frames = [f for f in tb if "/slimtorch/" in f.filename]
        if frames:
            f = frames[-1]
            return f"{f.filename.split('/slimtorch/', 1)[1]}:{f.lineno} {f.name}"
        others = [f for f in tb if not f.filename.endswith("matrix.py")]
        if others and not fallback:
            f = others[-1]
            fallback = f"outside slimtorch: {'/'.join(Path(f.filename).parts[-2:])}:{f.lineno} {f.name}"
        seen = seen.__cause__ or seen.__context__
    return fallback


def _classify(cell: Cell, err: BaseException) -> Cell:
    cell.reason = f"{type(err).__name__}: {str(err).strip()[:600]}"
    cell.frame = _frame(err)
    if isinstance(err, CheckFailed):
        cell.status = "fail"
    elif isinstance(err, st.UnsupportedModelError) and cell.phase == "step":
        cell.status = "unsupported"
    elif isinstance(err, st.SlimError):
        cell.status = "fail"
    else:
        cell.status = "crash"
    return cell


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _same_state(model: nn.Module, before: dict[str, torch.Tensor]) -> bool:
    now = model.state_dict()
    return now.keys() == before.keys() and all(
        now[k].shape == v.shape and now[k].dtype == v.dtype and torch.equal(now[k], v) for k, v in before.items())


def check_cell(row: str, column: str, onnx: bool = True) -> Cell:
    """Run one cell (see the module docstring) and return its :class:`Cell`; never raises."""
    cell = Cell(row, column)
    build: Callable[[], Built] = ROWS[row]
    col = COLUMNS[column]
    clock = time.perf_counter()

    def lap(phase: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        cell.seconds[phase] = round(now - clock, 3)
        clock = now

    try:
        model, example, calib = build()
        ref_full = run_model(model, example)
        ref = main_output(ref_full).clone()
        ctx = {"model": model, "ref": ref, "column": column, "metrics": cell.metrics, "params_before": params(model),
               "example": example, "calib": calib}
        before = _snapshot(model)
        lap("build")
        cell.phase = "step"
        try:
            ctx["applied"] = col.apply(model, example, calib)
        except st.UnsupportedModelError as err:
            lap("step")
            _classify(cell, err)
            if not _same_state(model, before) or not torch.equal(main_output(run_model(model, example)), ref):
                cell.status = "fail"
                cell.reason = "model changed after UnsupportedModelError: " + cell.reason
            return cell
        model.eval()
        lap("step")
        cell.phase = "check"
        out = main_output(run_model(model, example))
        ctx["out"] = out
        if out.shape != ref.shape:
            raise CheckFailed(f"output shape {tuple(out.shape)} != float's {tuple(ref.shape)}")
        if not torch.isfinite(out).all():
            raise CheckFailed("output has NaN or inf")
        col.check(ctx)
        lap("check")
        cell.phase = "roundtrip"
        with tempfile.TemporaryDirectory() as tmp:
            path = st.save(model, Path(tmp) / "model")
            cell.metrics["saved_bytes"] = path.stat().st_size
            fresh, _, _ = build()
            st.load(path, model=fresh)
            fresh.eval()
            again = main_output(run_model(fresh, example))
            if again.shape != out.shape or not torch.equal(again, out):
                diff = float((again - out).abs().max()) if again.shape == out.shape else float("nan")
                raise CheckFailed(f"st.load gives other outputs than the saved model (max abs diff {diff:.3g}, "
                                  f"shapes {tuple(again.shape)} vs {tuple(out.shape)})")
            lap("roundtrip")
            if onnx:
                cell.phase = "onnx"
                st.export_onnx(model, example, Path(tmp) / "model.onnx", check=True)
                lap("onnx")
        cell.phase = "done"
    except Exception as err:  # every outcome is recorded, never raised
        lap(cell.phase)
        _classify(cell, err)
    return cell


def main() -> int:
    parser = argparse.ArgumentParser(description="run one row of the conformance matrix")
    parser.add_argument("row", choices=sorted(ROWS))
    parser.add_argument("columns", nargs="*", help=f"default: all of {list(COLUMNS)}")
    parser.add_argument("--out", required=True, help="JSON-lines file to append one line per cell to")
    parser.add_argument("--onnx", nargs="*", default=None,
                        help="columns whose cells export to ONNX (default: every column; none given: no cell)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    import logging
    import warnings

    warnings.simplefilter("ignore")
    logging.getLogger("slimtorch").setLevel(logging.ERROR)
    for column in args.columns or list(COLUMNS):
        print(f"start {args.row} {column}", flush=True)  # the runner learns which cell a dying process was in
        cell = check_cell(args.row, column, onnx=args.onnx is None or column in args.onnx)
        with open(args.out, "a") as fh:
            fh.write(json.dumps(dataclasses.asdict(cell), default=str) + "\n")
        print(f"{cell.row:40s} {cell.column:14s} {cell.status:11s} {sum(cell.seconds.values()):6.1f}s "
              f"{cell.phase} {cell.reason[:150]}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
