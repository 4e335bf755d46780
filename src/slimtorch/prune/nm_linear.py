"""2:4 sparse tensor cores: a Linear layer whose 2:4-pruned weight multiplies on NVIDIA's sparse tensor cores.

NVIDIA GPUs from Ampere (compute capability 8.0) on run a half-precision (fp16/bf16) product with a 2:4 weight
(at most 2 non-zeros in every 4 consecutive input weights, what ``NMPruning(n=2, m=4)`` produces) at up to twice
the dense tensor-core rate, through ``torch.sparse.to_sparse_semi_structured`` (cuSPARSELt, or CUTLASS). Whether
that pays depends on the layer shape and the number of tokens: small products are bound by launch and memory
time, where the compressed weight gains little. So :func:`use_nm_kernels` never assumes it: it times each 2:4
layer dense and sparse on its real input (CUDA events, round-robin), then the whole model, and keeps a switch only
where it measured faster. On a CPU there is no such kernel (2:4 gives no CPU speed-up; see ``SparseLinear`` for
CSR at high sparsity), and :func:`use_nm_kernels` says so.

:class:`NMSparseLinear` holds its weight as a plain dense buffer (so ``slimtorch.save`` stores it and it loads
back exactly on any device) and packs it for the tensor cores the first time it runs on CUDA.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from slimtorch._log import logger
from slimtorch.data import call
from slimtorch.errors import ConfigError, UnsupportedModelError
from slimtorch.graph.surgery import replace_layer
from slimtorch.io.manifest import register_module
from slimtorch.measure.latency import time_cuda
from slimtorch.prune.semistructured import nm_violations
from slimtorch.prune.sparse_linear import _layer_inputs, kernel_candidates
from slimtorch.summary import StepSummary, record

HALF = {"float16": torch.float16, "bfloat16": torch.bfloat16}


def nm_unsupported_reason(device: torch.device | str) -> str | None:
    """Why 2:4 sparse tensor cores cannot run on ``device``, or None when they can.

    Args:
        device: the device the model lives on.

    Returns:
        A sentence naming the missing piece (a CUDA device of compute capability 8.0 or newer), or None.
    """
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return (f"the model is on {device.type!r}: 2:4 sparse tensor cores need an NVIDIA GPU (compute capability "
                "8.0+); move the model with model.cuda(), or use SparseLinear/kernel='auto' for CSR on a CPU")
    major, minor = torch.cuda.get_device_capability(device)
    if major < 8:
        return f"{torch.cuda.get_device_name(device)} has compute capability {major}.{minor}; 2:4 needs 8.0 or newer"
    return None


@register_module
class NMSparseLinear(nn.Module):
    """``y = x W^T + b`` with a 2:4-sparse half-precision ``W`` run on sparse tensor cores (inference only).

    On CUDA the weight is packed (values plus 2-bit indices) on the first call and the product runs through
    ``torch.sparse.to_sparse_semi_structured``; elsewhere the same dense weight is used with ``F.linear``, so
    the layer computes the same function on every device.

    Args:
        in_features: input size (a multiple of 4).
        out_features: output size.
        bias: whether the layer adds a bias.
        dtype: "float16" or "bfloat16", the precision of the weight and of the product.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, dtype: str = "float16"):
        super().__init__()
        if dtype not in HALF:
            raise ConfigError(f"NMSparseLinear dtype={dtype!r} is not one of {sorted(HALF)}: 2:4 sparse tensor "
                              "cores multiply in half precision")
        self.in_features, self.out_features, self.dtype_name = in_features, out_features, dtype
        self.register_buffer("weight", torch.zeros(out_features, in_features, dtype=HALF[dtype]))
        self.register_buffer("bias", torch.zeros(out_features, dtype=HALF[dtype]) if bias else None)
        self._packed: torch.Tensor | None = None

    @classmethod
    def from_linear(cls, linear: nn.Linear, name: str = "layer") -> NMSparseLinear:
        """An NMSparseLinear computing what the half-precision, 2:4-pruned ``linear`` computes.

        Args:
            linear: an ``nn.Linear`` in float16 or bfloat16 whose weight holds the 2:4 pattern.
            name: the layer's name, for error messages.

        Raises:
            UnsupportedModelError: the weight is not half precision or breaks the 2:4 pattern.
        """
        dtype = {v: k for k, v in HALF.items()}.get(linear.weight.dtype)
        if dtype is None:
            raise UnsupportedModelError(f"layer {name!r} is {linear.weight.dtype}; 2:4 sparse tensor cores run "
                                        "float16/bfloat16: convert the model first (model.half())")
        if linear.in_features % 4 or nm_violations(linear.weight, 2, 4):
            raise UnsupportedModelError(f"layer {name!r} does not hold the 2:4 pattern; prune it with "
                                        "st.NMPruning(n=2, m=4) and st.make_permanent first")
        out = cls(linear.in_features, linear.out_features, linear.bias is not None, dtype)
        out.to(linear.weight.device)
        out.weight.copy_(linear.weight.detach())
        if linear.bias is not None:
            out.bias.copy_(linear.bias.detach())
        return out

    def manifest_args(self) -> dict[str, Any]:
        """Constructor arguments recorded in the saved manifest."""
        return {"in_features": self.in_features, "out_features": self.out_features,
                "bias": self.bias is not None, "dtype": self.dtype_name}

    def weight_counts(self) -> tuple[int, int]:
        """(logical weights, non-zero weights), bias included, for ``slimtorch.measure``."""
        nb = 0 if self.bias is None else self.bias.numel()
        return self.weight.numel() + nb, int(self.weight.count_nonzero()) + nb

    def _apply(self, fn, recurse: bool = True):  # noqa: ANN001 - torch's signature
        self._packed = None  # moved or cast: pack again on the next CUDA call
        return super()._apply(fn, recurse)

    def _load_from_state_dict(self, *args, **kwargs) -> None:
        self._packed = None
        super()._load_from_state_dict(*args, **kwargs)

    def packed(self) -> torch.Tensor:
        """The weight as a ``SparseSemiStructuredTensor`` (packed once per device and dtype)."""
        if self._packed is None:
            from torch.sparse import to_sparse_semi_structured

            self._packed = to_sparse_semi_structured(self.weight.detach())
        return self._packed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not x.is_cuda or not x.shape[:-1].numel():  # no rows: the sparse kernels pad to a minimum row count
            return F.linear(x, self.weight, self.bias)
        # (tokens, in): the semi-structured product takes dense 2-D inputs (it views them, so no strided rows)
        rows = x.reshape(-1, self.in_features).contiguous()
        y = F.linear(rows, self.packed(), self.bias)
        return y.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, dtype={self.dtype_name}, 2:4"


def _try_pack(layer: NMSparseLinear, x: torch.Tensor) -> str | None:
    """Run the packed layer once; the reason it cannot run (shape or kernel limits), or None."""
    try:
        with torch.inference_mode():
            layer(x)
        return None
    except (RuntimeError, ValueError) as err:  # torch rejects shapes/dtypes its kernels do not cover
        return str(err).splitlines()[0]


def use_nm_kernels(
    model: nn.Module,
    example_inputs: Any,
    *,
    layers: Sequence[str] | None = None,
    min_speedup: float = 1.05,
) -> dict[str, dict[str, Any]]:
    """Replace 2:4-pruned half-precision Linear layers by :class:`NMSparseLinear` where it measured faster.

    Each layer holding the 2:4 pattern is timed dense and sparse on the input it really receives (CUDA events,
    round-robin); then the whole model with the winners switched is timed against the dense model, and every
    switch is undone unless the whole model is at least ``min_speedup`` faster too.

    GPT-2's ``Conv1D`` counts as a Linear; subclasses with a ``forward`` of their own that slimtorch does not
    know are left alone, logged and named in the step's summary (``slimtorch.summary.last_summary``).

    Args:
        model: a model on a CUDA device in float16/bfloat16 (changed in place); masks folded (``make_permanent``).
        example_inputs: inputs of the size the model will serve, on the model's device.
        layers: names of Linear layers to consider (None: every Linear holding the 2:4 pattern).
        min_speedup: dense time / sparse time a layer, and then the whole model, must reach.

    Returns:
        Layer name -> ``{"dense_ms", "sparse_ms", "speedup", "switched"}`` (or ``{"switched": False,
        "reason"}`` for a layer the kernels reject), plus ``"model"`` when a layer won alone.

    Raises:
        ConfigError: no example inputs.
        UnsupportedModelError: the model is not on a CUDA GPU with sparse tensor cores, or no Linear layer
            holds the 2:4 pattern in half precision.
    """
    if example_inputs is None:
        raise ConfigError("use_nm_kernels times 2:4 against dense kernels on real inputs: pass example_inputs")
    tensor = next(iter(model.parameters()), None)
    tensor = tensor if tensor is not None else next(iter(model.buffers()), None)
    reason = nm_unsupported_reason(tensor.device if tensor is not None else "cpu")
    if reason:
        raise UnsupportedModelError(reason)
    plain, skipped = kernel_candidates(model, layers)
    names = [n for n, m in plain.items() if m.weight.dtype in HALF.values() and m.in_features % 4 == 0
             and nm_violations(m.weight, 2, 4) == 0 and bool((m.weight == 0).any())]
    if not names:
        left = f" (left alone: {skipped})" if skipped else ""
        raise UnsupportedModelError(f"no float16/bfloat16 Linear layer holds the 2:4 pattern{left}: prune with "
                                    "st.NMPruning(n=2, m=4), fold with st.make_permanent, then model.half()")
    inputs = _layer_inputs(model, example_inputs, names)
    dense = copy.deepcopy(model)  # before any switch: packed weights are not copied
    results: dict[str, dict[str, Any]] = {}
    winners: dict[str, nn.Linear] = {}
    for name in names:
        if name not in inputs:
            continue
        linear, x = model.get_submodule(name), inputs[name]
        sparse = NMSparseLinear.from_linear(plain[name], name)
        failure = _try_pack(sparse, x)
        if failure:
            results[name] = {"switched": False, "reason": failure}
            continue
        ms = time_cuda({"dense": lambda linear=linear, x=x: linear(x), "sparse": lambda s=sparse, x=x: s(x)})
        speedup = ms["dense"] / max(ms["sparse"], 1e-9)
        results[name] = {"dense_ms": ms["dense"], "sparse_ms": ms["sparse"], "speedup": speedup,
                         "switched": speedup >= min_speedup}
        if results[name]["switched"]:
            winners[name] = linear
            replace_layer(model, name, sparse)
    if winners:
        ms = time_cuda({"dense": lambda: call(dense, example_inputs), "sparse": lambda: call(model, example_inputs)})
        whole = ms["dense"] / max(ms["sparse"], 1e-9)
        keep = whole >= min_speedup
        results["model"] = {"dense_ms": ms["dense"], "sparse_ms": ms["sparse"], "speedup": whole, "switched": keep}
        if not keep:
            for name, linear in winners.items():
                model.set_submodule(name, linear)
                results[name]["switched"] = False
    for name, r in results.items():
        if name != "model":
            logger.info("2:4 layer %s: %s", name, r.get("reason") or
                        f"dense {r['dense_ms']:.4f} ms, 2:4 {r['sparse_ms']:.4f} ms -> "
                        f"{'sparse' if r['switched'] else 'dense'}")
    record(model, StepSummary("use_nm_kernels", tuple(n for n in names if results.get(n, {}).get("switched")), skipped))
    return results
