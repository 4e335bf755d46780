"""A Linear layer that multiplies with a sparse CSR weight, used only where it measured faster than dense.

Sparse kernels beat a dense GEMM only at high sparsity, and where the break-even lies depends on the CPU,
the layer shape, the batch and the BLAS behind the dense path. So :func:`use_sparse_kernels` never assumes
it: it runs the model once on the example inputs, times each pruned Linear's dense and CSR products on that
layer's real input (in alternating blocks of calls, so machine load hits both alike), and switches only the
layers where the sparse kernel won by ``min_speedup``.

:class:`SparseLinear` keeps the CSR weight in memory but saves and loads it as the dense weight, which
``slimtorch.save`` stores as a bitmask plus values (smaller than CSR indices) and loads back exactly.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from slimtorch._log import logger
from slimtorch.data import call, run_hooked
from slimtorch.errors import ConfigError
from slimtorch.graph.surgery import replace_layer
from slimtorch.io.manifest import register_module
from slimtorch.layer_kinds import as_plain
from slimtorch.measure.latency import time_alternating
from slimtorch.select import swappable
from slimtorch.summary import StepSummary, record


def to_csr(weight: torch.Tensor) -> torch.Tensor:
    """``weight`` as a float32 sparse CSR tensor (torch's "CSR support is in beta" warning silenced)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        return weight.detach().to(torch.float32).to_sparse_csr()


@register_module
class SparseLinear(nn.Module):
    """``y = x W^T + b`` with ``W`` held as a ``torch.sparse_csr`` tensor (inference only, CPU).

    Args:
        in_features: input size.
        out_features: output size.
        bias: whether the layer adds a bias.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("weight_csr", to_csr(torch.zeros(out_features, in_features)), persistent=False)
        self.register_buffer("bias", torch.zeros(out_features) if bias else None)

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> SparseLinear:
        """A SparseLinear computing exactly what ``linear`` computes (its zero weights are dropped)."""
        out = cls(linear.in_features, linear.out_features, linear.bias is not None)
        out.weight_csr = to_csr(linear.weight)
        if linear.bias is not None:
            out.bias = linear.bias.detach().clone()
        return out

    def manifest_args(self) -> dict[str, Any]:
        """Constructor arguments recorded in the saved manifest."""
        return {"in_features": self.in_features, "out_features": self.out_features, "bias": self.bias is not None}

    def weight_counts(self) -> tuple[int, int]:
        """(logical weights, non-zero weights), bias included, for ``slimtorch.measure``."""
        nb = 0 if self.bias is None else self.bias.numel()
        return self.in_features * self.out_features + nb, int(self.weight_csr.values().count_nonzero()) + nb

    def dense_weight(self) -> torch.Tensor:
        """The weight as a dense ``(out, in)`` tensor."""
        return self.weight_csr.to_dense()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # torch's CPU CSR product is float32 only: bfloat16/float16 inputs compute in float32, return their dtype
        rows = x.reshape(-1, self.in_features).to(self.weight_csr.dtype)  # (tokens, in)
        y = (self.weight_csr @ rows.t()).t()  # (tokens, out)
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*x.shape[:-1], self.out_features).to(x.dtype)

    def _save_to_state_dict(self, destination: dict, prefix: str, keep_vars: bool) -> None:
        super()._save_to_state_dict(destination, prefix, keep_vars)
        destination[prefix + "weight"] = self.dense_weight()

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs) -> None:
        key = prefix + "weight"
        if key in state_dict:
            self.weight_csr = to_csr(state_dict[key])
        else:
            missing_keys.append(key)
        rest = {k: v for k, v in state_dict.items() if k != key}
        super()._load_from_state_dict(rest, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def extra_repr(self) -> str:
        nnz = self.weight_csr.values().numel()
        return f"in_features={self.in_features}, out_features={self.out_features}, nnz={nnz}"


def _layer_inputs(model: nn.Module, example_inputs: Any, names: Sequence[str]) -> dict[str, torch.Tensor]:
    """The input each named layer receives in one forward pass on ``example_inputs``."""
    seen: dict[str, torch.Tensor] = {}
    hooks = {model.get_submodule(n): (lambda _m, args, n=n: seen.setdefault(n, args[0].detach())) for n in names}
    run_hooked(model, [example_inputs], pre=hooks)
    return seen


def time_layer(linear: nn.Linear, x: torch.Tensor, *, blocks: int = 10, max_seconds: float = 0.5) -> dict:
    """Median ms per call of the dense and the CSR product of ``linear`` on input ``x``, timed in alternating
    blocks of 10 calls (at most ``max_seconds`` in all)."""
    sparse = SparseLinear.from_linear(linear)
    weight, bias = linear.weight.detach(), None if linear.bias is None else linear.bias.detach()
    timings = time_alternating({"dense": lambda: F.linear(x, weight, bias), "sparse": lambda: sparse(x)},
                               blocks=blocks, repeats=10, max_seconds=max_seconds)
    return {"dense_ms": timings["dense"].median_ms, "sparse_ms": timings["sparse"].median_ms}


def kernel_candidates(model: nn.Module, layers: Sequence[str] | None) -> tuple[dict[str, nn.Linear], dict[str, str]]:
    """The Linear layers (named in ``layers``, or all) a kernel swap may replace, each as the plain
    ``nn.Linear`` it computes (GPT-2's ``Conv1D`` transposed), and the subclasses it must leave alone.

    Returns:
        ``(plain, skipped)``: layer name -> plain Linear; layer name -> why it is left alone.
    """
    chosen, skipped = swappable(model, [nn.Linear])
    plain = {n: as_plain(m) for n, m in chosen if layers is None or n in layers}
    return plain, {n: why for n, why in skipped.items() if layers is None or n in layers}


def use_sparse_kernels(
    model: nn.Module,
    example_inputs: Any,
    *,
    layers: Sequence[str] | None = None,
    min_sparsity: float = 0.5,
    min_speedup: float = 1.1,
) -> dict[str, dict[str, Any]]:
    """Replace pruned ``nn.Linear`` layers (and GPT-2 ``Conv1D``) by :class:`SparseLinear` where the sparse
    kernel measured faster.

    Each candidate layer is timed alone (dense vs CSR on its real input); then the whole model with the
    winning layers switched is timed against the dense model, and every switch is undone unless the whole
    model is at least ``min_speedup`` faster too (per-layer timings on a loaded machine can mislead).

    Args:
        model: the model (changed in place); masks must already be folded (``make_permanent``).
        example_inputs: inputs of the batch size the model will serve; each layer is timed on its real input.
        layers: names of the Linear layers to consider (None: every Linear).
        min_sparsity: layers with fewer zeros (fraction 0-1) are not tried.
        min_speedup: dense time / sparse time a layer, and then the whole model, must reach.

    Subclasses with a ``forward`` of their own that slimtorch does not know are left alone, logged and named
    in the step's summary (``slimtorch.summary.last_summary``).

    Returns:
        Layer name -> ``{"sparsity", "dense_ms", "sparse_ms", "speedup", "switched"}`` for every layer tried,
        plus ``"model"`` -> ``{"dense_ms", "sparse_ms", "speedup", "switched"}`` when a layer won alone.

    Raises:
        ConfigError: no example inputs.
    """
    if example_inputs is None:
        raise ConfigError("kernel='auto' times sparse against dense kernels on real inputs: pass example_inputs=")
    plain, skipped = kernel_candidates(model, layers)
    zeros = {n: float((linear.weight == 0).float().mean()) for n, linear in plain.items()}
    names = [n for n in plain if zeros[n] >= min_sparsity]
    inputs = _layer_inputs(model, example_inputs, names)
    results: dict[str, dict[str, Any]] = {}
    winners: dict[str, nn.Module] = {}
    for name in names:
        if name not in inputs or inputs[name].device.type != "cpu":
            continue
        timing = time_layer(plain[name], inputs[name])
        speedup = timing["dense_ms"] / max(timing["sparse_ms"], 1e-9)
        results[name] = {"sparsity": zeros[name], **timing, "speedup": speedup, "switched": speedup >= min_speedup}
        if results[name]["switched"]:
            winners[name] = model.get_submodule(name)
    if winners:
        dense = copy.deepcopy(model)
        for name in winners:
            replace_layer(model, name, SparseLinear.from_linear(plain[name]))
        timings = time_alternating({"dense": lambda: call(dense, example_inputs),
                                    "sparse": lambda: call(model, example_inputs)}, blocks=10, repeats=5,
                                   max_seconds=1.0)
        whole = timings["dense"].median_ms / max(timings["sparse"].median_ms, 1e-9)
        keep = whole >= min_speedup
        results["model"] = {"dense_ms": timings["dense"].median_ms, "sparse_ms": timings["sparse"].median_ms,
                            "speedup": whole, "switched": keep}
        if not keep:
            for name, linear in winners.items():
                model.set_submodule(name, linear)
                results[name]["switched"] = False
    for name in names:
        if name in results:
            r = results[name]
            logger.info("layer %s at %.0f%% sparsity: dense %.3f ms, CSR %.3f ms -> %s", name, 100 * r["sparsity"],
                        r["dense_ms"], r["sparse_ms"], "sparse" if r["switched"] else "dense")
    switched = tuple(n for n in names if results.get(n, {}).get("switched"))
    record(model, StepSummary("use_sparse_kernels", switched, skipped))
    return results
