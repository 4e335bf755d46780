"""Which tensors of a traced model stay uint8 between int8 operators, on which grid, and which operators fuse.

Pure analysis of a ``torch.fx`` graph whose static int8 layers (``QuantConv2d``, ``StaticQuantLinear``) are leaf
modules; nothing is run or changed here. The decisions, in order:

1. **Activations fuse** into the int8 layer they follow when that layer's output goes nowhere else: ReLU,
   ReLU6/Hardtanh, Hardswish and SiLU are oneDNN post-ops, applied before the output is quantized.
2. **Residual adds fuse** into a convolution: ``conv(x) + other`` (then ReLU) is one oneDNN call with a "sum"
   post-op, uint8 out where ``other`` is uint8, float out (``other`` dequantized) where the sum is wanted as
   float.
3. **Tensors group into classes** joined by operators that commute with quantizing (max pooling, flatten/reshape/
   view, dropout and identity at inference, concatenation): all members of a class share one form.
4. **A class is uint8** when every operator producing it can write uint8 (an int8 layer or a fused add) and some
   int8 layer reads it (its input grid becomes the class's grid; a residual add's other input may instead have a
   grid calibrated for it); float operators reading it get it dequantized. Otherwise it is float, and each int8
   layer reading it quantizes its input itself as before.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import fx, nn

from slimtorch.quant.formats import QuantConv2d, StaticQuantLinear


@dataclass(frozen=True)
class Grid:
    """A uint8 grid: code ``q`` stands for ``(q - zero_point) * scale``; codes run 0..``qmax``."""

    scale: float
    zero_point: int
    qmax: int


def input_grid(layer: nn.Module) -> Grid:
    """The calibrated input grid of a static int8 layer."""
    return Grid(float(layer.input_scale), int(layer.input_zero_point), 2**layer.input_bits - 1)


@dataclass
class Fused:
    """An int8 layer and what runs with it in one kernel call.

    ``unary``/``scalars``: the activation post-op; ``accum``: the other input of a fused residual add;
    ``relu``: ReLU after the add.
    """

    layer: str
    kind: str  # "conv" or "linear"
    unary: str = "none"
    scalars: list = field(default_factory=list)
    accum: fx.Node | None = None
    relu: bool = False


@dataclass
class Plan:
    """The lowering decisions for one graph.

    ``values``: node -> the fused int8 call whose result that node's value is; ``absorbed``: nodes whose work one of
    those calls does (emitted nowhere); ``form``: node -> its uint8 grid (nodes not listed are float);
    ``reasons``: int8 layer -> why its input is not uint8 from the previous operator.
    """

    values: dict[fx.Node, Fused]
    absorbed: set[fx.Node]
    form: dict[fx.Node, Grid]
    reasons: dict[str, str]


_PASS_MODULES = (nn.Identity, nn.Dropout, nn.Dropout2d, nn.MaxPool2d, nn.Flatten)
_PASS_FUNCTIONS = {torch.flatten, F.max_pool2d, F.dropout, torch.reshape, torch.squeeze, torch.unsqueeze}
_PASS_METHODS = {"flatten", "view", "reshape", "contiguous", "squeeze", "unsqueeze"}
_CAT = {torch.cat, torch.concat}
_ADD_FUNCTIONS = {operator.add, operator.iadd, torch.add}
_SHAPE_METHODS = {"size", "dim"}


def _module(node: fx.Node, modules: dict[str, nn.Module]) -> nn.Module | None:
    return modules.get(node.target) if node.op == "call_module" else None


def int8_layer(node: fx.Node, modules: dict[str, nn.Module]) -> str | None:
    """``"conv"`` / ``"linear"`` where ``node`` calls a static int8 layer the lowered graph can run, else None."""
    layer = _module(node, modules)
    if isinstance(layer, QuantConv2d) and not layer.same_pad and not layer._saturates():
        return "conv"
    if isinstance(layer, StaticQuantLinear) and not layer._saturates():
        return "linear"
    return None


def activation(node: fx.Node, modules: dict[str, nn.Module]) -> tuple[str, list] | None:
    """The oneDNN post-op ``(name, scalars)`` that computes ``node`` from its first input, or None."""
    layer = _module(node, modules)
    if node.op == "call_module":
        if type(layer) is nn.ReLU:
            return "relu", []
        if isinstance(layer, nn.Hardtanh):  # ReLU6 too
            return "hardtanh", [float(layer.min_val), float(layer.max_val)]
        if type(layer) is nn.Hardswish:
            return "hardswish", []
        if type(layer) is nn.SiLU:
            return "swish", []
        return None
    extra = [a for a in node.args[1:] if not isinstance(a, bool)]
    if node.op == "call_method":
        return ("relu", []) if node.target in ("relu", "relu_") and not extra else None
    if node.op != "call_function" or extra:
        return None
    named = {F.relu: ("relu", []), torch.relu: ("relu", []), F.relu6: ("hardtanh", [0.0, 6.0]),
             F.hardswish: ("hardswish", []), F.silu: ("swish", [])}
    kwargs = {k for k in node.kwargs if k != "inplace"}
    return None if kwargs else named.get(node.target)


def passes_through(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    """Whether ``node`` maps its first input to its output code by code (it commutes with quantizing)."""
    if node.op == "call_module":
        layer = _module(node, modules)
        return isinstance(layer, _PASS_MODULES) and not getattr(layer, "return_indices", False)
    if node.op == "call_method":
        return node.target in _PASS_METHODS
    if node.op == "call_function" and node.target in _PASS_FUNCTIONS:
        return not node.kwargs.get("return_indices", False) and not node.kwargs.get("training", False)
    return False


def _is_cat(node: fx.Node) -> bool:
    return node.op == "call_function" and node.target in _CAT and isinstance(node.args[0], (list, tuple))


def _add_inputs(node: fx.Node) -> tuple[fx.Node, fx.Node] | None:
    """The two tensors of an ``a + b`` node (no ``alpha``), or None."""
    if node.kwargs:
        return None
    if node.op == "call_function" and node.target in _ADD_FUNCTIONS and len(node.args) == 2:
        a, b = node.args
    elif node.op == "call_method" and node.target in ("add", "add_") and len(node.args) == 2:
        a, b = node.args
    else:
        return None
    return (a, b) if isinstance(a, fx.Node) and isinstance(b, fx.Node) and a is not b else None


def reads_shape_only(node: fx.Node) -> bool:
    """Whether ``node`` reads only its input's shape (``x.size()``, ``x.dim()``, ``x.shape``, ``x.ndim``)."""
    if node.op == "call_method":
        return node.target in _SHAPE_METHODS
    return node.op == "call_function" and node.target is getattr and node.args[1:] in (("shape",), ("ndim",))


class _Classes:
    """Union-find over nodes: tensors that must share one form."""

    def __init__(self) -> None:
        self.parent: dict[fx.Node, fx.Node] = {}

    def find(self, n: fx.Node) -> fx.Node:
        self.parent.setdefault(n, n)
        while self.parent[n] is not n:
            self.parent[n] = self.parent[self.parent[n]]
            n = self.parent[n]
        return n

    def union(self, a: fx.Node, b: fx.Node) -> None:
        self.parent[self.find(a)] = self.find(b)


def _fuse_layers(nodes: list[fx.Node], modules: dict[str, nn.Module], adds: bool) -> tuple[dict, set]:
    """Steps 1 and 2: each int8 layer's call with its activation, and (``adds``) residual adds into convs."""
    values: dict[fx.Node, Fused] = {}
    absorbed: set[fx.Node] = set()
    for node in nodes:
        kind = int8_layer(node, modules)
        if kind is None:
            continue
        layer = modules[node.target]
        fused = Fused(node.target, kind, "relu" if layer.relu else "none")
        users = list(node.users)
        act = activation(users[0], modules) if len(users) == 1 and users[0].args[0] is node else None
        if act is not None and fused.unary == "none":
            fused.unary, fused.scalars = act
            absorbed.add(node)
            values[users[0]] = fused
        else:
            values[node] = fused
    if not adds:
        return values, absorbed
    for node in nodes:
        pair = _add_inputs(node)
        if pair is None:
            continue
        for q, other in (pair, pair[::-1]):
            fused = values.get(q)
            if fused and fused.kind == "conv" and fused.unary == "none" and list(q.users) == [node]:
                users = list(node.users)
                after = activation(users[0], modules) if len(users) == 1 else None
                fused.accum, fused.relu = other, after == ("relu", [])
                del values[q]
                absorbed.update({q, node} if fused.relu else {q})
                values[users[0] if fused.relu else node] = fused
                break
    return values, absorbed


def _forms(nodes: list[fx.Node], modules: dict[str, nn.Module], values: dict[fx.Node, Fused],
           absorbed: set[fx.Node], observed: dict[str, Grid]) -> dict[fx.Node, Grid]:
    """Steps 3 and 4: the uint8 grid of every node whose class stays uint8."""
    classes = _Classes()
    for node in nodes:
        if node in absorbed:
            continue
        if passes_through(node, modules) and isinstance(node.args[0], fx.Node):
            classes.union(node, node.args[0])
        elif _is_cat(node):
            for part in node.args[0]:
                classes.union(node, part)
    grid: dict[fx.Node, Grid] = {}  # class -> the input grid of the first int8 layer reading it
    floats: set[fx.Node] = set()  # classes a float operator writes
    for node in nodes:
        if node in absorbed:
            continue
        if node in values:
            layer_input = _layer_input(node, values, absorbed)
            grid.setdefault(classes.find(layer_input), input_grid(modules[values[node].layer]))
        elif passes_through(node, modules) or _is_cat(node):
            continue
        else:  # a float operator writes this class; its float inputs are dequantized where they are uint8
            floats.add(classes.find(node))
    for fused in values.values():  # a residual add's other input that no int8 layer reads: its calibrated grid
        if fused.accum is not None and fused.accum.name in observed:
            grid.setdefault(classes.find(fused.accum), observed[fused.accum.name])
    return {node: grid[classes.find(node)] for node in nodes
            if node not in absorbed and classes.find(node) in grid and classes.find(node) not in floats}


def _layer_input(value: fx.Node, values: dict[fx.Node, Fused], absorbed: set[fx.Node]) -> fx.Node:
    """The node whose value is the int8 layer's input, for the fused call whose result ``value`` is."""
    node = value
    while True:  # walk back from the value through the absorbed nodes (activation, add) to the layer call
        inputs = [a for a in node.all_input_nodes if a in absorbed]
        if node.op == "call_module" and values[value].layer == node.target:
            return node.args[0]
        node = inputs[0]


def _identity_at_inference(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    """``nn.Identity`` calls, and torchvision's ``stochastic_depth`` (an ``fx.wrap``-ped function, so a node of its
    own) called with ``training=False``: both return their input."""
    if node.op == "call_module":
        return type(modules.get(node.target)) is nn.Identity and bool(node.args)
    if node.op == "call_function" and getattr(node.target, "__name__", "") == "stochastic_depth":
        training = node.kwargs.get("training", node.args[3] if len(node.args) > 3 else True)
        return training is False
    return False


def drop_identities(graph: fx.Graph, modules: dict[str, nn.Module]) -> None:
    """Remove what returns its input at inference from ``graph`` (in place): BatchNorm folding and ReLU fusion
    leave ``nn.Identity`` calls between a layer and what follows it, where they would hide an activation or a
    residual add from fusion."""
    for node in list(graph.nodes):
        if _identity_at_inference(node, modules):
            node.replace_all_uses_with(node.args[0])
            graph.erase_node(node)


def accum_candidates(graph: fx.Graph, modules: dict[str, nn.Module]) -> list[fx.Node]:
    """The nodes that would be the other input of a fused residual add (the ones :func:`plan` may want an
    ``observed`` grid for)."""
    values, _ = _fuse_layers(list(graph.nodes), modules, adds=True)
    return [f.accum for f in values.values() if f.accum is not None]


def plan(graph: fx.Graph, modules: dict[str, nn.Module], observed: dict[str, Grid] | None = None) -> Plan:
    """The lowering decisions for ``graph`` (see the module docstring).

    ``observed``: node name -> grid calibrated on that node's values, for the other inputs of residual adds that
    no int8 layer reads (a downsampling branch). A residual add whose result is uint8 stays fused only where its
    other input is uint8 too; otherwise it runs in float and its convolution gives float (decided until nothing
    changes).
    """
    nodes = list(graph.nodes)
    values, absorbed = _fuse_layers(nodes, modules, adds=True)
    while True:
        form = _forms(nodes, modules, values, absorbed, observed or {})
        broken = [v for v, f in values.items() if f.accum is not None and v in form and f.accum not in form]
        if not broken:
            break
        keep = {values[v].layer for v in values if v not in broken and values[v].accum is not None}
        values, absorbed = _refuse(nodes, modules, keep)
    return Plan(values, absorbed, form, _reasons(nodes, modules, values, absorbed, form))


def _refuse(nodes: list[fx.Node], modules: dict[str, nn.Module], keep: set[str]) -> tuple[dict, set]:
    """Fusion again, with residual adds fused only into the convolutions in ``keep``."""
    values, absorbed = _fuse_layers(nodes, modules, adds=True)
    for value, fused in list(values.items()):
        if fused.accum is None or fused.layer in keep:
            continue
        del values[value]
        layer_node = next(n for n in nodes if n.op == "call_module" and n.target == fused.layer)
        absorbed.discard(layer_node)
        absorbed.difference_update({value, *[u for u in layer_node.users]})
        values[layer_node] = Fused(fused.layer, fused.kind, "relu" if modules[fused.layer].relu else "none")
    return values, absorbed


def _reasons(nodes: list[fx.Node], modules: dict[str, nn.Module], values: dict[fx.Node, Fused],
             absorbed: set[fx.Node], form: dict[fx.Node, Grid]) -> dict[str, str]:
    """Why each int8 layer's input comes as float (its layer quantizes it), by layer name."""
    reasons = {}
    for value, fused in values.items():
        source = _layer_input(value, values, absorbed)
        if source in form and form[source] == input_grid(modules[fused.layer]):
            continue
        while passes_through(source, modules) and isinstance(source.args[0], fx.Node):
            source = source.args[0]
        what = "the model's input" if source.op == "placeholder" else f"{source.name} ({_describe(source)})"
        reasons[fused.layer] = f"input from {what}, a float value"
    return reasons


def _describe(node: fx.Node) -> str:
    if node.op == "call_module":
        return node.target
    return getattr(node.target, "__name__", str(node.target))
