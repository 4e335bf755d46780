"""Every compressed layer accepts what its float layer accepts: any memory layout (row slices, transposes,
expanded and channels-last tensors), 1-D to 4-D inputs for linears and unbatched 3-D inputs for convs, batches
of 0, 1 and N rows, and models in bfloat16 or float16 (compressed and run in their own dtype).

Each case builds a small float layer, compresses it through the public verbs and checks, per input:

- the exact output shape and the input's dtype;
- agreement with its float reference within the family's tolerance (the float layer itself, or for lossy
  families a float layer whose weights the method reproduces exactly: low-rank, binary, ternary, pruned);
- agreement, to float rounding, with the same layer on the same values as a contiguous batched tensor (so a
  layout or rank only changes how the values are read, never the numbers).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as hst
from torch import nn

import slimtorch as st
from slimtorch.prune.nm_linear import NMSparseLinear
from slimtorch.prune.sparse_linear import SparseLinear
from slimtorch.quant.binary import prepare_binary
from slimtorch.quant.binary.math import sign

IN, OUT, CIN, COUT, HW = 64, 32, 8, 16, 10

Reference = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Case:
    """One compressed layer class, built from a float layer by ``build(model) -> (compressed, reference)``.

    Attributes:
        name: test id.
        kind: "linear" or "conv".
        layer: class name of the compressed model's layer.
        build: compresses a deep copy of the float model; returns it and the float reference to compare with.
        tol: max |y - reference| / max |reference| in float32.
        weight: makes the float weight (out, ...) the method reproduces exactly; None: the layer's own init.
        dtype: the dtype the layer runs in (NMSparseLinear is half precision only).
    """

    name: str
    kind: str
    layer: str
    build: Callable[[nn.Sequential], tuple[nn.Module, Reference]]
    tol: float
    weight: Callable[[tuple[int, ...]], torch.Tensor] | None = None
    dtype: torch.dtype = torch.float32


def _dtype(model: nn.Module) -> torch.dtype:
    return next(model.parameters()).dtype


def _data(model: nn.Module, kind: str) -> list[torch.Tensor]:
    """Two calibration batches in the model's dtype."""
    g = torch.Generator().manual_seed(1)
    shape = (16, IN) if kind == "linear" else (4, CIN, HW, HW)
    return [torch.randn(shape, generator=g).to(_dtype(model)) for _ in range(2)]


def _verb(fn: Callable[[nn.Module], nn.Module]) -> Callable[[nn.Sequential], tuple[nn.Module, Reference]]:
    """A build comparing against the float model itself."""

    def build(model: nn.Sequential) -> tuple[nn.Module, Reference]:
        return fn(copy.deepcopy(model)).eval(), model

    return build


def _calibrated(fn: Callable[[nn.Module, list], nn.Module], kind: str):
    """A build whose verb takes calibration data; the layer's ranges are fixed by one batch, then eval."""

    def build(model: nn.Sequential) -> tuple[nn.Module, Reference]:
        data = _data(model, kind)
        out = fn(copy.deepcopy(model), data)
        with torch.no_grad():
            out(data[0])  # QAT layers track their activation range in training mode
        return out.eval(), model

    return build


def _binary_input(kind: str):
    """Fully binary layer: the reference is the float layer on ``sign(x - input_shift)``."""

    def build(model: nn.Sequential) -> tuple[nn.Module, Reference]:
        config = st.Binarize(keep_first=False, keep_last=False, activations=True)
        out = st.quantize(copy.deepcopy(model), config, data=_data(model, kind)).eval()
        shift = out[0].input_shift

        def reference(x: torch.Tensor) -> torch.Tensor:
            view = (-1,) if kind == "linear" else (-1, 1, 1)
            return model(sign(x - shift.reshape(view).to(x.dtype)))

        return out, reference

    return build


def _pruned(to_sparse: bool):
    """Unstructured pruning (a masked float layer), optionally then the CSR layer; reference: the pruned weights."""

    def build(model: nn.Sequential) -> tuple[nn.Module, Reference]:
        pruned = st.prune(copy.deepcopy(model), st.UnstructuredPruning(sparsity=0.5, prune_head=True))
        reference = st.make_permanent(copy.deepcopy(pruned)).eval()
        if to_sparse:
            return nn.Sequential(SparseLinear.from_linear(reference[0])).eval(), reference
        return pruned.eval(), reference

    return build


def _nm(model: nn.Sequential) -> tuple[nn.Module, Reference]:
    pruned = st.make_permanent(st.prune(copy.deepcopy(model), st.NMPruning(n=2, m=4, prune_head=True)))
    return nn.Sequential(NMSparseLinear.from_linear(pruned[0])).eval(), pruned.eval()


def _binary_weight(shape: tuple[int, ...]) -> torch.Tensor:
    """+-a per output channel: binarization reproduces it exactly."""
    g = torch.Generator().manual_seed(2)
    return sign(torch.randn(shape, generator=g)) * (0.05 + 0.1 * torch.rand(shape[0], generator=g)).reshape(
        -1, *[1] * (len(shape) - 1))


def _ternary_weight(shape: tuple[int, ...]) -> torch.Tensor:
    """{-a, 0, a} per output channel: TWN's threshold (0.7 mean |w| < a) reproduces it exactly."""
    g = torch.Generator().manual_seed(3)
    codes = torch.randint(-1, 2, shape, generator=g).float()
    codes.reshape(shape[0], -1)[:, 0] = 1.0  # no all-zero channel
    return codes * (0.05 + 0.1 * torch.rand(shape[0], generator=g)).reshape(-1, *[1] * (len(shape) - 1))


def _rank4(shape: tuple[int, ...], method: str = "svd") -> torch.Tensor:
    """A weight of exact rank 4 in the sense ``method`` factorizes."""
    g = torch.Generator().manual_seed(4)
    r = 4
    if len(shape) == 2 or method == "svd":
        out, rest = shape[0], int(torch.tensor(shape[1:]).prod())
        return (torch.randn(out, r, generator=g) @ torch.randn(r, rest, generator=g) / rest).reshape(shape)
    out, cin, kh, kw = shape
    if method == "spatial_svd":  # M[(o, j), (c, i)] = W[o, c, i, j] of rank r
        m = torch.randn(out * kw, r, generator=g) @ torch.randn(r, cin * kh, generator=g) / (cin * kh)
        return m.reshape(out, kw, cin, kh).permute(0, 2, 3, 1).contiguous()
    core = torch.randn(r, r, kh, kw, generator=g)  # Tucker-2 with ranks (r, r)
    w = torch.einsum("oa,ib,abhw->oihw", torch.randn(out, r, generator=g), torch.randn(cin, r, generator=g), core)
    return w / (cin * kh * kw)


def _lowrank(method: str):
    return _verb(lambda m: st.decompose(m, st.LowRank(rank=4, method=method, keep_head=False)))


LINEAR_CASES = [
    Case("static", "linear", "StaticQuantLinear",
         _calibrated(lambda m, d: st.quantize(m, st.StaticQuant(calibration_batches=2), data=d), "linear"), 0.03),
    Case("dynamic_token", "linear", "DynamicQuantLinear", _verb(lambda m: st.quantize(m, st.DynamicQuant())), 0.03),
    Case("dynamic_tensor", "linear", "DynamicQuantLinear",
         _verb(lambda m: st.quantize(m, st.DynamicQuant(activations="tensor"))), 0.03),
    Case("int8_weight_only", "linear", "WeightOnlyQuantLinear",
         _verb(lambda m: st.quantize(m, st.WeightOnlyQuant(bits=8, group_size=None))), 0.03),
    Case("int4_weight_only", "linear", "WeightOnlyQuantLinear",
         _verb(lambda m: st.quantize(m, st.WeightOnlyQuant(bits=4, group_size=32))), 0.2),
    Case("binary", "linear", "BinaryLinear",
         _verb(lambda m: st.quantize(m, st.Binarize(keep_first=False, keep_last=False))), 1e-4, _binary_weight),
    Case("ternary", "linear", "BinaryLinear",
         _verb(lambda m: st.quantize(m, st.Ternarize(keep_first=False, keep_last=False))), 1e-4, _ternary_weight),
    Case("binary_activations", "linear", "BinaryLinear", _binary_input("linear"), 1e-4, _binary_weight),
    Case("binary_qat", "linear", "BinaryQATLinear",
         _verb(lambda m: prepare_binary(m, st.Binarize(keep_first=False, keep_last=False))), 1e-4, _binary_weight),
    Case("fake_quant_int4", "linear", "FakeQuantLinear",
         _verb(lambda m: st.prepare_qat(m, st.WeightOnlyQuant(bits=4, group_size=32))), 0.2),
    Case("fake_quant_static", "linear", "FakeQuantLinear",
         _calibrated(lambda m, d: st.prepare_qat(m, st.StaticQuant(), data=d), "linear"), 0.03),
    Case("lowrank", "linear", "LowRankLinear", _lowrank("svd"), 1e-4, _rank4),
    Case("masked", "linear", "Linear", _pruned(to_sparse=False), 1e-5),
    Case("sparse_csr", "linear", "SparseLinear", _pruned(to_sparse=True), 1e-5),
    Case("nm_2_4", "linear", "NMSparseLinear", _nm, 1e-2, dtype=torch.float16),
]

CONV_CASES = [
    Case("static", "conv", "QuantConv2d",
         _calibrated(lambda m, d: st.quantize(m, st.StaticQuant(calibration_batches=2), data=d), "conv"), 0.03),
    Case("binary", "conv", "BinaryConv2d",
         _verb(lambda m: st.quantize(m, st.Binarize(keep_first=False, keep_last=False))), 1e-4, _binary_weight),
    Case("ternary", "conv", "BinaryConv2d",
         _verb(lambda m: st.quantize(m, st.Ternarize(keep_first=False, keep_last=False))), 1e-4, _ternary_weight),
    Case("binary_activations", "conv", "BinaryConv2d", _binary_input("conv"), 1e-4, _binary_weight),
    Case("binary_qat", "conv", "BinaryQATConv2d",
         _verb(lambda m: prepare_binary(m, st.Binarize(keep_first=False, keep_last=False))), 1e-4, _binary_weight),
    Case("fake_quant_static", "conv", "FakeQuantConv2d",
         _calibrated(lambda m, d: st.prepare_qat(m, st.StaticQuant(), data=d), "conv"), 0.03),
    Case("lowrank_svd", "conv", "LowRankConv2d", _lowrank("svd"), 1e-4, _rank4),
    Case("tucker2", "conv", "Tucker2Conv2d", _lowrank("tucker"), 1e-4, lambda s: _rank4(s, "tucker")),
    Case("spatial_svd", "conv", "SpatialSVDConv2d", _lowrank("spatial_svd"), 1e-4,
         lambda s: _rank4(s, "spatial_svd")),
    Case("masked", "conv", "Conv2d", _pruned(to_sparse=False), 1e-5),
]


def _float_model(case: Case, dtype: torch.dtype) -> nn.Sequential:
    torch.manual_seed(0)
    layer = nn.Linear(IN, OUT) if case.kind == "linear" else nn.Conv2d(CIN, COUT, 3, padding=1)
    if case.weight is not None:
        with torch.no_grad():
            layer.weight.copy_(case.weight(tuple(layer.weight.shape)))
    return nn.Sequential(layer).to(dtype).eval()


_BUILT: dict[tuple[str, str, torch.dtype], tuple[nn.Module, Reference]] = {}


def built(case: Case, dtype: torch.dtype | None = None) -> tuple[nn.Module, Reference]:
    """The case's compressed model and reference in ``dtype`` (default: the case's), built once per session."""
    dtype = dtype or case.dtype
    key = (case.kind, case.name, dtype)
    if key not in _BUILT:
        model, reference = case.build(_float_model(case, dtype))
        assert type(model[0]).__name__ == case.layer
        _BUILT[key] = (model, reference)
    return _BUILT[key]


def _g() -> torch.Generator:
    return torch.Generator().manual_seed(5)


def linear_inputs(dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Named linear inputs [..., IN]: layouts, ranks and batch sizes."""
    def r(*shape):
        return torch.randn(*shape, generator=_g()).to(dtype)

    return {
        "contiguous": r(5, IN),
        "row_slice": r(5, IN + 32)[:, :IN],  # a column window of a wider activation: rows strided
        "transposed": r(IN, 5).t(),  # column-major
        "expanded": r(1, IN).expand(5, IN),  # stride 0 over the batch
        "1d": r(IN),
        "3d": r(2, 3, IN),
        "3d_slice": r(2, 3, IN + 32)[..., 16:16 + IN],
        "4d": r(2, 2, 3, IN),
        "batch0": r(0, IN),
        "3d_empty": r(2, 0, IN),
        "batch1": r(1, IN),
        "batchN": r(40, IN),
    }


def conv_inputs(dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Named conv inputs [(N,) CIN, H, W]: layouts and batch sizes, and the unbatched 3-D form."""
    def r(*shape):
        return torch.randn(*shape, generator=_g()).to(dtype)

    return {
        "contiguous": r(3, CIN, HW, HW),
        "channels_last": r(3, CIN, HW, HW).contiguous(memory_format=torch.channels_last),
        "width_slice": r(3, CIN, HW, HW + 4)[..., 2:2 + HW],
        "permuted": r(3, HW, HW, CIN).permute(0, 3, 1, 2),
        "expanded": r(1, CIN, HW, HW).expand(3, CIN, HW, HW),
        "unbatched": r(CIN, HW, HW),
        "batch0": r(0, CIN, HW, HW),
        "batch1": r(1, CIN, HW, HW),
        "batchN": r(6, CIN, HW, HW),
    }


def _canonical(case: Case, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The model on the same values as a contiguous batched tensor, reshaped like its output for ``x``."""
    if case.kind == "linear":
        return model(x.contiguous().reshape(-1, IN)).reshape(*x.shape[:-1], -1)
    return model(x.contiguous().unsqueeze(0))[0] if x.dim() == 3 else model(x.contiguous())


def check(case: Case, model: nn.Module, reference: Reference, x: torch.Tensor, tol: float) -> None:
    with torch.no_grad():
        y, want = model(x), reference(x)
        assert y.shape == want.shape and y.dtype == x.dtype
        if not x.numel():
            return
        scale = float(want.float().abs().max())
        err = float((y.float() - want.float()).abs().max())
        assert err <= tol * scale, f"{case.name}: max error {err:.3g} vs tolerance {tol * scale:.3g}"
        # the same values read as a dense batch: equal up to float rounding (half: a few units in the last place)
        ulp = 1e-5 if x.dtype == torch.float32 else 4 * torch.finfo(x.dtype).eps
        torch.testing.assert_close(_canonical(case, model, x), y, rtol=1e-4, atol=ulp * scale)


@pytest.mark.parametrize("case", LINEAR_CASES, ids=lambda c: c.name)
@pytest.mark.parametrize("name", list(linear_inputs(torch.float32)))
def test_linear_layers_accept_every_input(case: Case, name: str):
    model, reference = built(case)
    check(case, model, reference, linear_inputs(case.dtype)[name], case.tol)


@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: c.name)
@pytest.mark.parametrize("name", list(conv_inputs(torch.float32)))
def test_conv_layers_accept_every_input(case: Case, name: str):
    model, reference = built(case)
    check(case, model, reference, conv_inputs(case.dtype)[name], case.tol)


@pytest.mark.parametrize("case", [c for c in LINEAR_CASES if c.name in {"dynamic_tensor", "int4_weight_only",
                                                                        "ternary", "sparse_csr"}],
                         ids=lambda c: c.name)
@settings(max_examples=15, deadline=None)
@given(lead=hst.lists(hst.integers(0, 5), max_size=3), offset=hst.integers(0, 8), transpose=hst.booleans())
def test_linear_layers_any_leading_shape(case: Case, lead: list[int], offset: int, transpose: bool):
    model, reference = built(case)
    wide = torch.randn(*lead, IN + offset, generator=_g())
    x = wide[..., offset:]  # strided unless offset is 0
    if transpose and x.dim() >= 2:
        x = x.transpose(0, -1).contiguous().transpose(0, -1)
    check(case, model, reference, x, case.tol)


# half precision: the compressed layer agrees with the float layer run in that dtype; bfloat16 keeps 8
# significant bits (float16 11), so its rounding adds to the method's own error
HALF_TOL = {torch.bfloat16: 0.03, torch.float16: 0.01}
HALF_CASES = [c for c in LINEAR_CASES + CONV_CASES if c.dtype == torch.float32]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("case", HALF_CASES, ids=lambda c: f"{c.kind}-{c.name}")
def test_half_precision_models_compress_and_run_in_their_dtype(case: Case, dtype: torch.dtype):
    model, reference = built(case, dtype)
    inputs = linear_inputs(dtype) if case.kind == "linear" else conv_inputs(dtype)
    for name in ("contiguous", "batch0", "batchN"):
        check(case, model, reference, inputs[name], case.tol + HALF_TOL[dtype])


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("case", HALF_CASES, ids=lambda c: f"{c.kind}-{c.name}")
def test_half_precision_models_accept_every_input(case: Case, dtype: torch.dtype):
    model, reference = built(case, dtype)
    inputs = linear_inputs(dtype) if case.kind == "linear" else conv_inputs(dtype)
    for x in inputs.values():
        check(case, model, reference, x, case.tol + HALF_TOL[dtype])


SAVED = [c for c in HALF_CASES if not c.layer.startswith("FakeQuant")]  # QAT layers are converted before saving


@pytest.mark.parametrize("case", SAVED, ids=lambda c: f"{c.kind}-{c.name}")
def test_bfloat16_compressed_models_save_and_load_in_bfloat16(case: Case, tmp_path):
    model, _ = built(case, torch.bfloat16)
    x = (linear_inputs if case.kind == "linear" else conv_inputs)(torch.bfloat16)["contiguous"]
    loaded = st.load(st.save(model, tmp_path / "m"), _float_model(case, torch.bfloat16)).eval()
    assert type(loaded[0]).__name__ == case.layer
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    before, after = model.state_dict(), loaded.state_dict()
    assert {k: v.dtype for k, v in after.items()} == {k: v.dtype for k, v in before.items()}


def test_row_sliced_input_reaches_int4_kernel_like_an_encoder_activation():
    """The reported crash: a column window of a wider activation fed to an int4 weight-only layer."""
    model = st.quantize(nn.Sequential(nn.Linear(IN, OUT)), st.WeightOnlyQuant(bits=4, group_size=32))
    wide = torch.randn(4, 7, IN * 2)
    with torch.no_grad():
        out = model(wide[..., :IN])
        assert out.shape == (4, 7, OUT)
        torch.testing.assert_close(out, model(wide[..., :IN].contiguous()))
    assert F.linear(wide[..., :IN], model[0].dequantized_weight(), model[0].bias).sub(out).abs().max() < 0.05


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_hugging_face_encoder_runs_int4_in_its_dtype(dtype: torch.dtype):
    """BERT's pooler reads ``hidden_states[:, 0]``, a strided [batch, hidden] view, straight into a Linear."""
    transformers = pytest.importorskip("transformers")
    cfg = transformers.BertConfig(vocab_size=100, hidden_size=IN, num_hidden_layers=1, num_attention_heads=4,
                                  intermediate_size=2 * IN, max_position_embeddings=32)
    torch.manual_seed(0)
    model = transformers.BertModel(cfg).eval().to(dtype)
    ids = torch.randint(0, 100, (2, 12))
    with torch.no_grad():
        want = model(ids).pooler_output
        st.quantize(model, st.WeightOnlyQuant(bits=4, group_size=32))
        got = model(ids).pooler_output
    assert type(model.pooler.dense).__name__ == "WeightOnlyQuantLinear"
    assert got.dtype == dtype and got.shape == want.shape
    assert float((got.float() - want.float()).abs().max()) < 0.1  # tanh outputs in [-1, 1]
