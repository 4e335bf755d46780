"""Lowering a statically quantized model to a graph whose tensors stay uint8 between int8 operators.

After ``StaticQuant`` every int8 layer takes float in and gives float out, so each one quantizes its input again
and residual adds run in float. :func:`lower` traces the model with ``torch.fx`` (int8 layers and torch's own
layers as leaves), decides which tensors stay uint8 (:mod:`.plan`) and rewrites the graph onto the operators of
:mod:`.ops`: each int8 layer writes its output on the next one's input grid, activations and residual adds run
inside the convolution's oneDNN call, max pooling, reshapes and concatenation work on uint8 codes. The model
object stays the user's: its ``forward`` is replaced by the lowered graph's (the modules are shared, nothing is
copied), and inputs that are not CPU float32 tensors, or a ``torch.compile`` trace, still run the per-layer form.

A model whose forward cannot be traced (Python control flow on values) is lowered child by child; what stays
per-layer is reported with the reason. ``slimtorch.save`` records the traced graph's operators
(:func:`describe`); ``slimtorch.load`` traces the architecture it is given again, checks it computes the same
graph, and lowers it the same way (:func:`restore`): nothing is unpickled and no code comes from the file.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import fx, nn
from torch.fx.operator_schemas import normalize_function

from slimtorch._log import logger
from slimtorch.data import iter_inputs
from slimtorch.errors import ArtifactError
from slimtorch.io.manifest import register_model_record
from slimtorch.quant import kernels
from slimtorch.quant.lower import ops
from slimtorch.quant.lower.plan import (
    Fused,
    Grid,
    Plan,
    accum_candidates,
    drop_identities,
    input_grid,
    plan,
    reads_shape_only,
)
from slimtorch.quant.modules import _QuantBase
from slimtorch.quant.observers import make_observer
from slimtorch.quant.qparams import choose_qparams

__all__ = ["LoweringReport", "is_lowered", "lower", "per_layer", "unlower"]


@dataclass
class LoweringReport:
    """What :func:`lower` did.

    Attributes:
        layers: int8 layers in the lowered graphs.
        chained: of those, the layers whose input arrives as uint8 from the previous operator.
        adds: residual adds fused into a convolution.
        reasons: layer -> why its input is float (it quantizes the input itself); for modules that could not be
            traced, module -> the tracing error.
    """

    layers: int = 0
    chained: int = 0
    adds: int = 0
    reasons: dict[str, str] = field(default_factory=dict)

    def line(self) -> str:
        """One line for the log: how much runs chained and why the rest does not."""
        why = "; ".join(f"{k}: {v}" for k, v in list(self.reasons.items())[:3])
        more = f"; ... ({len(self.reasons) - 3} more)" if len(self.reasons) > 3 else ""
        return (f"lowered: {self.chained} of {self.layers} int8 layers take uint8 from the previous operator, "
                f"{self.adds} residual adds fused" + (f"; float inputs: {why}{more}" if why else ""))


class _Tracer(fx.Tracer):
    """torch.fx tracer that keeps torch's layers and every slimtorch layer as leaves."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, _QuantBase) or type(m).__module__.startswith("slimtorch.") or super().is_leaf_module(
            m, qualname)


def _trace(module: nn.Module) -> fx.Graph:
    """``module``'s forward as a torch.fx graph, ``nn.Identity`` calls left out."""
    graph = _Tracer().trace(module)
    drop_identities(graph, dict(module.named_modules()))
    return graph


def _operators(graph: fx.Graph) -> list[list[str]]:
    """The graph as ``[op, target]`` rows: what a saved model records to check a later trace against."""
    rows = []
    for node in graph.nodes:
        target = node.target if isinstance(node.target, str) else getattr(node.target, "__qualname__",
                                                                            str(node.target))
        rows.append([node.op, str(target)])
    return rows


def _has_int8(module: nn.Module) -> bool:
    return any(hasattr(m, "int8_kernel") for m in module.modules())


def lower(model: nn.Module, data: Any = None, num_batches: int = 8, observer: str = "minmax",
          percentile: float = 99.99) -> LoweringReport:
    """Lower ``model`` (already through ``StaticQuant``) in place: see the module docstring.

    Args:
        data: calibration batches (as ``st.quantize`` takes them) for the ranges of the tensors that join a
            residual add without passing an int8 layer's input (a downsampling branch); without data those adds
            run in float.
        num_batches, observer, percentile: how many batches, and the observer choosing each range.

    Returns:
        The :class:`LoweringReport`; a model with no static int8 layer is left as it is (empty report).
    """
    report = LoweringReport()
    _lower_module(model, "", report, lambda gm, nodes: _observe(gm, nodes, data, num_batches, observer, percentile))
    return report


def _observe(graph_module: fx.GraphModule, nodes: list[fx.Node], data: Any, num_batches: int, observer: str,
             percentile: float) -> dict[str, Grid]:
    """Calibrated uint8 grids of ``nodes``' values, from running ``data`` through the per-layer ``graph_module``."""
    if data is None or not nodes:
        return {}
    observers = {n.name: make_observer(observer, percentile) for n in nodes}

    class Recorder(fx.Interpreter):
        def run_node(self, n: fx.Node) -> Any:
            out = super().run_node(n)
            if n.name in observers and isinstance(out, torch.Tensor):
                observers[n.name].observe(out.detach().float())
            return out

    bits = kernels.activation_bits()
    with torch.no_grad():
        for batch in iter_inputs(data, num_batches):
            args, kwargs = (batch, {}) if isinstance(batch, tuple) else ((batch,), {})
            Recorder(graph_module).run(*args, **kwargs)
    grids = {}
    for name, obs in observers.items():
        lo, hi = obs.range(bits, signed=False)
        if math.isfinite(lo) and math.isfinite(hi):
            scale, zero = choose_qparams(torch.tensor(lo), torch.tensor(hi), bits=bits, symmetric=False, signed=False)
            grids[name] = Grid(float(scale), int(zero), 2**bits - 1)
    return grids


def _lower_module(module: nn.Module, path: str, report: LoweringReport, observe: Any) -> None:
    if not _has_int8(module) or hasattr(module, "int8_kernel"):
        return
    try:
        graph = _trace(module)
    except Exception as err:  # any failure of symbolic tracing: this module runs per layer, its children may lower
        report.reasons[path or type(module).__name__] = f"forward not traceable ({str(err).splitlines()[0][:120]})"
        for name, child in module.named_children():
            _lower_module(child, f"{path}.{name}" if path else name, report, observe)
        return
    modules = dict(module.named_modules())
    observed = observe(fx.GraphModule(module, graph), accum_candidates(graph, modules))
    decided = plan(graph, modules, observed)
    lowered = _rewrite(graph, decided, modules)
    _install(module, fx.GraphModule(module, lowered), observed)
    prefix = f"{path}." if path else ""
    report.layers += len(decided.values)
    report.chained += len(decided.values) - len(decided.reasons)
    report.adds += sum(f.accum is not None for f in decided.values.values())
    report.reasons.update({prefix + k: v for k, v in decided.reasons.items()})


def _rewrite(graph: fx.Graph, decided: Plan, modules: dict[str, nn.Module]) -> fx.Graph:
    """A new graph computing ``graph`` with the decisions of ``decided``."""
    new = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}  # old node -> new node, in the old node's form
    as_float: dict[fx.Node, fx.Node] = {}
    layers: dict[str, fx.Node] = {}
    order = {node: i for i, node in enumerate(graph.nodes)}

    def value(node: Any, want: Grid | None = None) -> Any:
        """``node``'s new value as float (``want`` None) or as uint8 on ``want`` (float where its form differs)."""
        if not isinstance(node, fx.Node):
            return node
        grid = decided.form.get(node)
        if grid is None or grid == want:
            return env[node]
        if node not in as_float:
            as_float[node] = new.call_function(ops.dequantize, (env[node], grid.scale, grid.zero_point))
        return as_float[node]

    def same_form(node: Any) -> Any:
        return env[node] if isinstance(node, fx.Node) else node

    for node in graph.nodes:
        if node in decided.absorbed:
            continue
        fused = decided.values.get(node)
        if fused is not None:
            if fused.layer not in layers:
                layers[fused.layer] = new.get_attr(fused.layer)
            env[node] = _call(new, node, fused, decided, layers[fused.layer], value, modules, order)
        elif node.op == "output":
            env[node] = new.output(fx.node.map_arg(node.args[0], value))
        elif node in decided.form and _max_pool(node, modules) is not None:
            env[node] = new.call_function(ops.max_pool2d, (env[node.args[0]],), _max_pool(node, modules),
                                          name=node.name)
        elif node.op in ("placeholder", "get_attr") or node in decided.form or reads_shape_only(node):
            env[node] = new.node_copy(node, same_form)
        else:
            env[node] = new.node_copy(node, value)
    return new


def _max_pool(node: fx.Node, modules: dict[str, nn.Module]) -> dict | None:
    """The keyword arguments of ``ops.max_pool2d`` (all but the input) for a 2-D max pooling node, else None."""
    if node.op == "call_module" and isinstance(modules.get(node.target), nn.MaxPool2d):
        m = modules[node.target]
        return {"kernel_size": m.kernel_size, "stride": m.stride, "padding": m.padding, "dilation": m.dilation,
                "ceil_mode": m.ceil_mode}
    if node.op == "call_function" and node.target is torch.nn.functional.max_pool2d:
        bound = normalize_function(node.target, node.args, node.kwargs, normalize_to_only_use_kwargs=True)
        return {k: v for k, v in bound.kwargs.items() if k not in ("input", "return_indices")} if bound else None
    return None


def _call(new: fx.Graph, node: fx.Node, fused: Fused, decided: Plan, layer: fx.Node, value: Any,
          modules: dict[str, nn.Module], order: dict[fx.Node, int]) -> fx.Node:
    """The node of ``new`` running one fused int8 call, its output in ``node``'s decided form."""
    grid = decided.form.get(node)
    out = (grid.scale, grid.zero_point, grid.qmax) if grid else (0.0, 0, 255)
    layer_input = _input_of(node, fused)
    x = value(layer_input, input_grid(modules[fused.layer]))
    if fused.accum is None:
        op = ops.conv if fused.kind == "conv" else ops.linear
        return new.call_function(op, (x, layer, *out, fused.unary, fused.scalars), name=node.name)
    keep = _read_later(fused.accum, node, decided, order)
    if grid is None:  # a float sum: the other input as float (oneDNN takes a float one only with scale 1)
        accum, accum_qparams = value(fused.accum), (1.0, 0)
    else:
        accum_grid = decided.form[fused.accum]
        accum, accum_qparams = value(fused.accum, accum_grid), (accum_grid.scale, accum_grid.zero_point)
    return new.call_function(ops.conv_add, (x, layer, accum, *accum_qparams, *out, fused.relu, keep),
                             name=node.name)


def _input_of(node: fx.Node, fused: Fused) -> fx.Node:
    """The old node whose value the fused call's layer reads."""
    while not (node.op == "call_module" and node.target == fused.layer):
        node = next(a for a in node.all_input_nodes if a is not fused.accum)
    return node.args[0]


def _read_later(accum: fx.Node, at: fx.Node, decided: Plan, order: dict[fx.Node, int]) -> bool:
    """Whether anything after ``at`` reads ``accum`` or a view of it (oneDNN writes the sum into its memory)."""
    seen, stack = set(), [accum]
    while stack:
        node = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        for user in node.users:
            if user in decided.absorbed or user is at:
                continue
            if order[user] > order[at]:
                return True
            if user in decided.form and user not in decided.values:  # a view or copy of the same codes
                stack.append(user)
    return accum.op == "placeholder"


class _LoweredForward:
    """``forward`` of a lowered module: the lowered graph's code run on the module itself (so it calls the
    module's current submodules), for CPU float32 inputs; otherwise the class's own forward: under
    ``torch.compile``, while an int8 layer the graph calls directly has forward hooks, and for good once one was
    replaced (the model changed after lowering; logged once)."""

    def __init__(self, module: nn.Module, graph_module: fx.GraphModule, observed: dict[str, Grid]) -> None:
        self.module, self.observed = module, observed
        self.code = type(graph_module).forward  # generated code reading only attributes of its ``self``
        targets = {n.target for n in graph_module.graph.nodes if n.op == "get_attr"}
        self.layers = {t: m for t, m in module.named_modules() if t in targets}  # the int8 layers the code calls
        self.stale = False

    def _current(self) -> bool:
        """Whether the lowered code may run: no int8 layer it calls directly was replaced, and none has hooks
        (a hook on a layer sees its float input and output, which only the per-layer form has)."""
        if not self.stale and any(self.module.get_submodule(p) is not m for p, m in self.layers.items()):
            self.stale = True
            logger.warning("%s changed after its int8 graph was lowered (an int8 layer was replaced): it runs per "
                           "layer now; quantize again to lower it", type(self.module).__name__)
        return not self.stale and not any(m._forward_hooks or m._forward_pre_hooks for m in self.layers.values())

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        tensors = [a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)]
        if (torch.compiler.is_compiling() or not all(t.is_cpu and t.dtype == torch.float32 for t in tensors)
                or not self._current()):
            return type(self.module).forward(self.module, *args, **kwargs)
        return self.code(self.module, *args, **kwargs)

    def __deepcopy__(self, memo: dict) -> _LoweredForward:
        import copy

        clone = object.__new__(_LoweredForward)
        clone.module, clone.code = copy.deepcopy(self.module, memo), self.code
        clone.observed, clone.stale = dict(self.observed), self.stale
        clone.layers = {p: copy.deepcopy(m, memo) for p, m in self.layers.items()}
        return clone


def _install(module: nn.Module, graph_module: fx.GraphModule, observed: dict[str, Grid]) -> None:
    module.__dict__["forward"] = _LoweredForward(module, graph_module, observed)


def is_lowered(module: nn.Module) -> bool:
    """Whether ``module`` or one of its submodules runs a lowered graph."""
    return any(isinstance(m.__dict__.get("forward"), _LoweredForward) for m in module.modules())


@contextlib.contextmanager
def per_layer(model: nn.Module) -> Iterator[nn.Module]:
    """Within the block, ``model`` runs its per-layer form (each int8 layer float in, float out), as for ONNX
    export and torch.export; the lowered graphs are put back after."""
    taken = {m: m.__dict__.pop("forward") for m in model.modules()
             if isinstance(m.__dict__.get("forward"), _LoweredForward)}
    try:
        yield model
    finally:
        for m, forward in taken.items():
            m.__dict__["forward"] = forward


def unlower(model: nn.Module) -> None:
    """Put every module of ``model`` back on its per-layer forward (the lowered graphs are dropped)."""
    for m in model.modules():
        if isinstance(m.__dict__.get("forward"), _LoweredForward):
            del m.__dict__["forward"]


def describe(model: nn.Module) -> dict | None:
    """The manifest record of a lowered model: for each lowered module, a digest of its traced graph's
    operators (None when nothing is lowered)."""
    graphs, grids = {}, {}
    for path, m in model.named_modules():
        forward = m.__dict__.get("forward")
        if isinstance(forward, _LoweredForward):
            graphs[path] = _digest(_operators(_trace(m)))
            grids[path] = {n: [g.scale, g.zero_point, g.qmax] for n, g in forward.observed.items()}
    return {"graphs": graphs, "grids": grids} if graphs else None


def _grid_entry(value: Any) -> bool:
    return (isinstance(value, list) and len(value) == 3 and all(isinstance(v, (int, float)) for v in value)
            and value[0] > 0 and 0 <= value[1] <= value[2] <= 255)


def _digest(rows: list[list[str]]) -> str:
    return hashlib.sha256(repr(rows).encode()).hexdigest()


def restore(model: nn.Module, record: dict) -> None:
    """Lower the modules a saved model had lowered, after checking each traces to the graph it was saved with.

    Raises:
        ArtifactError: the record is malformed, or a module's forward now computes another graph.
    """
    graphs, grids = record.get("graphs"), record.get("grids", {})
    if not (isinstance(graphs, dict) and all(isinstance(v, str) for v in graphs.values()) and isinstance(grids, dict)
            and all(isinstance(g, dict) and all(_grid_entry(e) for e in g.values()) for g in grids.values())):
        raise ArtifactError("the manifest's lowered-graph record is malformed; the file was tampered with, save the "
                            "model again")
    modules = dict(model.named_modules())
    for path, digest in graphs.items():
        module = modules.get(path)
        if module is None:
            raise ArtifactError(f"the saved model lowered module {path!r}, which the architecture given lacks")
        try:
            graph = _trace(module)
        except Exception as err:
            raise ArtifactError(f"{path or type(module).__name__}: its forward no longer traces ({err}); load it "
                                "with the code it was saved with") from None
        if _digest(_operators(graph)) != digest:
            raise ArtifactError(f"{path or type(module).__name__}: its forward computes another graph than when the "
                                "model was saved (the code changed); load it with the code it was saved with, or "
                                "quantize again")
        mods = dict(module.named_modules())
        observed = {n: Grid(float(s), int(z), int(q)) for n, (s, z, q) in grids.get(path, {}).items()}
        _install(module, fx.GraphModule(module, _rewrite(graph, plan(graph, mods, observed), mods)), observed)
    logger.debug("restored %d lowered graphs", len(graphs))


register_model_record("lowered", describe, restore)
