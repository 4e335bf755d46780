"""Trace a model from a real forward pass into a flat list of tensor operations.

The forward runs once on the user's example inputs under a ``TorchFunctionMode``, so Python control flow in
``forward`` is no obstacle: whatever branch the inputs take is what is recorded. Every call to a torch
function or tensor method becomes an :class:`Op` whose tensor arguments are replaced by :class:`Ref`
placeholders (integer ids). Parameters and buffers keep their qualified names, so the graph can say which
weights an op reads, including parameters used directly in ``forward`` (class tokens, layer scales).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from slimtorch.data import call
from slimtorch.errors import DataError, UnsupportedModelError


@dataclass(frozen=True)
class Ref:
    """A placeholder for a tensor inside an op's arguments: the tensor's id in :class:`Trace`."""

    id: int


@dataclass
class Op:
    """One recorded call: ``name`` is the normalized function name (``linear``, ``add``, ``view`` ...)."""

    name: str
    args: tuple
    kwargs: dict
    outputs: list[int]
    module: str = ""

    def refs(self) -> list[int]:
        """Ids of every tensor the op reads, in argument order (tensors inside lists included)."""
        found: list[int] = []
        _collect(self.args, found)
        _collect(tuple(self.kwargs.values()), found)
        return found


@dataclass
class Trace:
    """The recorded forward: ops in execution order, tensor shapes, and which ids are parameters."""

    ops: list[Op] = field(default_factory=list)
    shapes: dict[int, tuple[int, ...]] = field(default_factory=dict)
    params: dict[int, str] = field(default_factory=dict)
    inputs: list[int] = field(default_factory=list)
    outputs: list[int] = field(default_factory=list)

    def readers(self) -> dict[int, list[int]]:
        """Tensor id -> indices (into ``ops``) of the ops that read it, in execution order; an op that works in
        place reads the tensor it returns, and the ops after it read its result under the same id."""
        found: dict[int, list[int]] = {}
        for index, op in enumerate(self.ops):
            for r in dict.fromkeys(op.refs()):
                found.setdefault(r, []).append(index)
        return found

    def module_calls(self) -> dict[str, int]:
        """Module name -> how many recorded ops ran inside it as their innermost module."""
        calls: dict[str, int] = {}
        for op in self.ops:
            if op.module:
                calls[op.module] = calls.get(op.module, 0) + 1
        return calls


def _collect(obj: Any, found: list[int]) -> None:
    if isinstance(obj, Ref):
        found.append(obj.id)
    elif isinstance(obj, tuple | list):
        for item in obj:
            _collect(item, found)
    elif isinstance(obj, dict):
        for item in obj.values():
            _collect(item, found)


def op_name(func: Any) -> str:
    """Normalize a torch function or method to a short name: ``Tensor.__iadd__`` -> ``add``, ``relu_`` -> ``relu``."""
    name = getattr(func, "__name__", None) or str(func)
    if name == "__get__":  # property access such as tensor.T or tensor.data
        name = getattr(getattr(func, "__self__", None), "__name__", "get")
    name = name.strip("_")
    if name.startswith(("i", "r")) and name[1:] in {"add", "sub", "mul", "truediv", "div", "and", "or"}:
        name = name[1:]
    return name.rstrip("_") or name


_PAUSED = [0]


@contextlib.contextmanager
def untraced():
    """Ops run inside this block are not recorded (side outputs such as averaged attention weights)."""
    _PAUSED[0] += 1
    try:
        yield
    finally:
        _PAUSED[0] -= 1


class _Recorder(TorchFunctionMode):
    def __init__(self, trace: Trace, named: dict[int, str], module_stack: list[str]) -> None:
        super().__init__()
        self.trace = trace
        self.named = named
        self.stack = module_stack
        self.alive: list[torch.Tensor] = []  # keep every tensor alive so python ids stay unique

    def ref(self, obj: Any) -> Any:
        if isinstance(obj, torch.Tensor):
            key = id(obj)
            if key not in self.trace.shapes:
                self.alive.append(obj)
                self.trace.shapes[key] = tuple(obj.shape)
                if key in self.named:
                    self.trace.params[key] = self.named[key]
            return Ref(key)
        if isinstance(obj, tuple | list):
            return type(obj)(self.ref(o) for o in obj) if not hasattr(obj, "_fields") else tuple(
                self.ref(o) for o in obj)
        if isinstance(obj, dict):
            return {k: self.ref(v) for k, v in obj.items()}
        return obj

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        tensors = [o for o in (out if isinstance(out, tuple | list) else [out]) if isinstance(o, torch.Tensor)]
        if tensors and not _PAUSED[0]:
            rargs, rkwargs = self.ref(args), self.ref(kwargs)
            outs = []
            for t in tensors:
                # an in-place op returns its input object: record it as a new value of the same id
                self.alive.append(t)
                self.trace.shapes[id(t)] = tuple(t.shape)
                outs.append(id(t))
            self.trace.ops.append(Op(op_name(func), rargs, rkwargs, outs, self.stack[-1] if self.stack else ""))
        return out


def trace(model: nn.Module, example_inputs: Any) -> Trace:
    """Run ``model`` once on ``example_inputs`` and record every tensor operation.

    Args:
        model: the model to trace; it is run in eval mode without gradients and its mode is restored.
        example_inputs: a tensor, a tuple of positional inputs or a dict of keyword inputs.

    Returns:
        The :class:`Trace`: ops in execution order, shapes by tensor id, parameter/buffer names by id.

    Raises:
        DataError: no example inputs were given.
        UnsupportedModelError: the forward pass failed on the example inputs.
    """
    if example_inputs is None:
        raise DataError("tracing the model needs example_inputs=<a batch the model accepts>, e.g. torch.randn(1, ...)")
    named = {id(p): n for n, p in model.named_parameters(remove_duplicate=False)}
    named.update({id(b): n for n, b in model.named_buffers(remove_duplicate=False)})
    result = Trace()
    stack: list[str] = []
    hooks = []
    for name, mod in model.named_modules():
        hooks.append(mod.register_forward_pre_hook(lambda m, a, _n=name: stack.append(_n)))
        hooks.append(mod.register_forward_hook(lambda m, a, o: (stack.pop(), None)[1]))
    recorder = _Recorder(result, named, stack)
    was_training = model.training
    model.eval()
    try:
        inputs = example_inputs
        with torch.no_grad():
            result.inputs = _ids(recorder.ref(inputs))
            with recorder:
                out = call(model, inputs)
            result.outputs = _ids(recorder.ref(output_tensors(out)))
    except (RuntimeError, TypeError, ValueError, IndexError) as err:
        raise UnsupportedModelError(
            f"the forward pass on example_inputs failed while tracing ({type(err).__name__}: {err}); "
            "pass example_inputs the model accepts"
        ) from None
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    recorder.alive.clear()
    return result


def output_tensors(out: Any) -> list[torch.Tensor]:
    """Every tensor in a model output (tensors, tuples, lists, dicts and Hugging Face output objects)."""
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict) or hasattr(out, "values") and callable(out.values):
        return [t for v in out.values() for t in output_tensors(v)]
    if isinstance(out, tuple | list):
        return [t for v in out for t in output_tensors(v)]
    return []


def _ids(refs: Any) -> list[int]:
    found: list[int] = []
    _collect(refs if isinstance(refs, tuple | list | dict) else [refs], found)
    return found

