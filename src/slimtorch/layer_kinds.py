"""What a layer computes, as the families that read or replace it see it.

A family that swaps a layer for a compressed twin (quantization, QAT, binary, low-rank, sparse and N:M kernels,
the ONNX twins) must keep what the layer computes. Plain ``nn.Linear``/``nn.Conv2d`` (and subclasses that keep
torch's ``forward``) are what the twins reproduce. Third-party layers differ in three ways, told apart here:

- ``"same_pad"``: a convolution subclass that pads its input TensorFlow-"same" style in its own ``forward``
  (timm's ``Conv2dSame``, TensorFlow ports). The twin applies :func:`pad_same` itself (its ``same_pad``
  attribute, recorded in the manifest), so the padding is kept.
- ``"transposed"``: Hugging Face GPT-2's ``Conv1D``, a linear layer whose weight is stored ``[in, out]``.
  :func:`as_plain` gives the ``nn.Linear`` it computes; masking families prune its weight in place.
- ``"unknown"``: any other subclass with a ``forward`` of its own. Swapping it would silently drop what that
  ``forward`` does, so swapping families skip it and say so.

A subclass with its own ``forward`` is classified by running it once on a small random input next to the plain
computations (no weights change, the global random state is untouched): one that computes exactly what the
torch layer computes is ``"plain"``, one that computes same padding is ``"same_pad"``.

Example:
    >>> import torch
    >>> class LoggedLinear(torch.nn.Linear):
    ...     def forward(self, x):
    ...         return super().forward(x)
    >>> layer_kind(LoggedLinear(4, 2)).kind
    'plain'
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

#: qualified class names of GPT-2-style transposed linear layers (weight ``[in, out]``, bias ``[out]``)
TRANSPOSED_LINEAR = frozenset({"transformers.pytorch_utils.Conv1D", "transformers.modeling_utils.Conv1D"})

Kind = Literal["plain", "same_pad", "transposed", "unknown"]


@dataclass(frozen=True)
class LayerKind:
    """How a layer computes: ``kind`` and, for ``"unknown"``, why slimtorch cannot reproduce it."""

    kind: Kind
    reason: str = ""


def qualified_name(cls: type) -> str:
    """``module.QualName`` of a class, as recorded in manifests and log lines."""
    return f"{cls.__module__}.{cls.__qualname__}"


def is_transposed_linear(module: nn.Module) -> bool:
    """True for GPT-2's ``Conv1D`` (recognised by class name: transformers is never imported here)."""
    return any(qualified_name(c) in TRANSPOSED_LINEAR for c in type(module).__mro__)


def same_padding(size: int, kernel: int, stride: int, dilation: int) -> int:
    """Total padding (elements) TensorFlow's "same" adds along one spatial axis of ``size`` elements."""
    return max((math.ceil(size / stride) - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)


def pad_same(x: torch.Tensor, kernel_size: tuple[int, ...], stride: tuple[int, ...],
             dilation: tuple[int, ...]) -> torch.Tensor:
    """Pad the last two axes of ``x`` as TensorFlow's "same" padding does (the extra element goes after).

    Returns:
        ``x`` padded with zeros so that a convolution with padding 0 gives ``ceil(size / stride)`` outputs.
    """
    pad_h = same_padding(x.shape[-2], kernel_size[0], stride[0], dilation[0])
    pad_w = same_padding(x.shape[-1], kernel_size[1], stride[1], dilation[1])
    if not pad_h and not pad_w:
        return x
    return F.pad(x, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2))


def _torch_base(module: nn.Module) -> type[nn.Module] | None:
    for cls in (nn.Linear, nn.Conv2d, nn.Conv1d, nn.Conv3d, nn.ConvTranspose2d):
        if isinstance(module, cls):
            return cls
    return None


def _owns_forward(module: nn.Module, base: type[nn.Module]) -> bool:
    """True when the module's class replaces ``forward`` (or a conv's ``_conv_forward``) of its torch base."""
    cls = type(module)
    return any(getattr(cls, attr, None) is not getattr(base, attr, None) for attr in ("forward", "_conv_forward")
               if hasattr(base, attr))


@contextlib.contextmanager
def _probing(module: nn.Module) -> Iterator[torch.Generator]:
    """Run probe forwards of ``module``: eval mode and no gradients inside, its mode restored after; yields the
    seeded generator for the probe inputs (the global random state is never touched)."""
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            yield torch.Generator(device="cpu").manual_seed(0)
    finally:
        module.train(was_training)


def _probe_input(module: nn.Module, base: type[nn.Module], extra: tuple[int, ...],
                 gen: torch.Generator) -> torch.Tensor:
    """A random input for a linear (``extra[0]`` rows) or a 2-D convolution (each spatial side ``extra``
    elements longer than the dilated kernel), in the weight's dtype and on its device."""
    weight = module.weight
    if base is nn.Linear:
        shape = (extra[0], module.in_features)
    else:
        spatial = (k * d + e for k, d, e in zip(module.kernel_size, module.dilation, extra, strict=True))
        shape = (1, module.in_channels, *spatial)
    return torch.randn(shape, generator=gen).to(weight.device, weight.dtype)


def _probe(module: nn.Module, base: type[nn.Module]) -> Kind | None:
    """Run ``module`` on random inputs beside the plain and the same-padded computation; the kind that matches."""
    weight = getattr(module, "weight", None)
    if (base not in (nn.Linear, nn.Conv2d) or not isinstance(weight, torch.Tensor) or weight.is_meta
            or not weight.dtype.is_floating_point):
        return None
    bias = getattr(module, "bias", None)
    kinds: set[Kind] = {"plain", "same_pad"} if base is nn.Conv2d else {"plain"}
    # two spatial sizes of different parity: stride-2 same padding differs between them
    sizes = [(7, 9), (8, 6)] if base is nn.Conv2d else [(3,)]
    try:
        with _probing(module) as gen:
            for size in sizes:
                x = _probe_input(module, base, size, gen)
                got = module(x)
                if not isinstance(got, torch.Tensor):
                    return None
                if base is nn.Linear:
                    if not _close(got, F.linear(x, weight, bias)):
                        kinds.discard("plain")
                    continue
                if "plain" in kinds and not _close(got, nn.Conv2d._conv_forward(module, x, weight, bias)):
                    kinds.discard("plain")
                if "same_pad" in kinds:
                    padded = pad_same(x, module.kernel_size, module.stride, module.dilation)
                    same = F.conv2d(padded, weight, bias, module.stride, 0, module.dilation, module.groups)
                    if not _close(got, same):
                        kinds.discard("same_pad")
    except Exception:  # noqa: BLE001 - a forward that fails on a probe input is simply not one we know
        return None
    return "plain" if "plain" in kinds else next(iter(kinds), None)


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and torch.allclose(a.float(), b.float(), rtol=1e-3, atol=1e-4)


def layer_kind(module: nn.Module) -> LayerKind:
    """Classify a linear or convolution layer by what its ``forward`` computes.

    Returns:
        ``LayerKind("plain")`` for torch layers and subclasses computing the same; ``"same_pad"`` for
        convolutions that pad TensorFlow-"same" style themselves; ``"transposed"`` for GPT-2's ``Conv1D``;
        ``"unknown"`` (with the reason) for any other subclass with a ``forward`` of its own. slimtorch's own
        compressed layers (classes with a boolean ``same_pad``) are ``"same_pad"`` when theirs is set, so a
        twin replacing a twin (QAT convert, ONNX export) carries the padding; otherwise ``"unknown"``.
    """
    if is_transposed_linear(module):
        return LayerKind("transposed")
    if isinstance(getattr(type(module), "same_pad", None), bool):  # a slimtorch twin: its flag says, no probe
        if module.same_pad:
            return LayerKind("same_pad")
        return LayerKind("unknown", f"{qualified_name(type(module))} is a compressed slimtorch layer")
    base = _torch_base(module)
    if base is None:
        return LayerKind("unknown", f"{qualified_name(type(module))} is not a linear or convolution layer")
    if type(module) is base or not _owns_forward(module, base):
        return LayerKind("plain")
    found = _probe(module, base)
    if found is not None:
        return LayerKind(found)
    return LayerKind("unknown", f"{qualified_name(type(module))} subclasses {base.__name__} with a forward of its "
                                "own that slimtorch does not know; it is left as it is")


_READS_CHILD_WEIGHT = re.compile(r"self\.(\w+(?:\.\w+)*)\.weight\b")


@functools.cache
def _children_weight_read(cls: type[nn.Module]) -> frozenset[str]:
    """Attribute paths ``x`` (``"out_proj"``, or ``"embeddings.patch_embeddings.projection"`` as Hugging Face ViT
    reads) for which some ``forward`` in ``cls``'s MRO (below ``nn.Module``) reads ``self.x.weight``; empty where
    no source is available."""
    names: set[str] = set()
    for klass in cls.__mro__:
        if klass is nn.Module or not issubclass(klass, nn.Module) or "forward" not in vars(klass):
            continue
        try:
            source = inspect.getsource(vars(klass)["forward"])
        except (OSError, TypeError):
            continue
        names.update(_READS_CHILD_WEIGHT.findall(source))
    return frozenset(names)


def weight_readers(model: nn.Module) -> dict[str, str]:
    """Layers whose parent reads their ``.weight`` directly in its ``forward`` (torch's ``MultiheadAttention``
    hands ``self.out_proj.weight`` to a functional kernel, torchvision's Swin attention reads
    ``self.qkv.weight``, Hugging Face T5 reads ``self.wo.weight.dtype``): a compressed twin without a float
    ``weight`` would break that parent, so swapping families leave these layers as they are.

    The parent's ``forward`` source (each class of its MRO, read once per class) is searched for
    ``self.<child>.weight``; a class whose source is unavailable reads nothing.

    Returns:
        Qualified layer name mapped to the reason it stays as it is.
    """
    found = {}
    for name, parent in model.named_modules():
        for child in _children_weight_read(type(parent)):
            try:
                parent.get_submodule(child)
            except AttributeError:  # an attribute chain that is not a submodule path
                continue
            label = name or "<model>"
            found[f"{name}.{child}" if name else child] = (
                f"its parent {label} ({type(parent).__name__}) reads its .weight directly in forward; "
                "it stays as it is")
    return found


def as_plain(module: nn.Module) -> nn.Module:
    """The plain torch layer a known layer computes, to build a compressed twin from.

    ``"plain"`` layers come back as they are; GPT-2's ``Conv1D`` as a new ``nn.Linear`` holding the transposed
    weight (a copy, same dtype and device); a same-padded convolution as a new ``nn.Conv2d`` with padding 0
    sharing its weights (the twin pads, see :func:`pad_same`).

    Raises:
        ValueError: the layer is ``"unknown"`` (callers skip those first).
    """
    kind = layer_kind(module)
    if kind.kind == "plain":
        return module
    if kind.kind == "transposed":
        weight = module.weight
        linear = nn.Linear(weight.shape[0], weight.shape[1], bias=module.bias is not None,
                           device=weight.device, dtype=weight.dtype)
        with torch.no_grad():
            linear.weight.copy_(weight.t())
            if module.bias is not None:
                linear.bias.copy_(module.bias)
        return linear
    if kind.kind == "same_pad":
        conv = nn.Conv2d(module.in_channels, module.out_channels, module.kernel_size, module.stride, 0,
                         module.dilation, module.groups, module.bias is not None, device="meta")
        conv.weight, conv.bias = module.weight, module.bias
        return conv
    raise ValueError(kind.reason)


#: torch functions that compute with a weight as it is stored: a zero entry contributes nothing to them
_WEIGHT_PRODUCTS = frozenset({"linear", "conv1d", "conv2d", "conv3d", "addmm", "matmul", "mm"})
#: torch functions that only read a weight's metadata (``weight.shape`` is a ``__get__``)
_WEIGHT_READS = frozenset({"__get__", "size", "dim", "numel"})


class _WeightUses(TorchFunctionMode):
    """Records the names of the torch functions that receive ``weight`` itself during a forward."""

    def __init__(self, weight: torch.Tensor):
        super().__init__()
        self.weight, self.uses = weight, set()

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001 - torch's signature
        kwargs = kwargs or {}
        if any(a is self.weight for a in (*args, *kwargs.values())):
            self.uses.add(getattr(func, "__name__", str(func)))
        return func(*args, **kwargs)


def masking_reason(module: nn.Module) -> str | None:
    """Why zeroing entries of a layer's weight would not remove them from what the layer computes, or None.

    Masking families (unstructured and N:M pruning) keep the layer and zero its weight, so a subclass keeps its
    own ``forward``; that is only pruning when the forward multiplies with the weight as stored. Known kinds
    do; an ``"unknown"`` subclass is run once on a small random input (weights, random state and mode kept)
    and must hand its ``weight`` unchanged to a linear/convolution product. One that transforms it first
    (timm's ``StdConv2d`` standardizes it: a zero becomes ``-mean / std``) is refused.

    Returns:
        None when masking the weight prunes the layer, else the reason (naming the class).
    """
    kind = layer_kind(module)
    if kind.kind != "unknown":
        return None
    weight, base = getattr(module, "weight", None), _torch_base(module)
    if base is None or not isinstance(weight, torch.Tensor) or weight.is_meta:
        return kind.reason
    recorder = _WeightUses(weight)
    try:
        with _probing(module) as gen:
            x = _probe_input(module, base, (2,) if base is nn.Linear else (3,) * len(module.kernel_size), gen)
            with recorder:
                module(x)
    except Exception:  # noqa: BLE001 - a forward that fails on a probe input is not one we can vouch for
        recorder.uses = set()
    if recorder.uses & _WEIGHT_PRODUCTS and recorder.uses <= _WEIGHT_PRODUCTS | _WEIGHT_READS:
        return None
    return (f"{qualified_name(type(module))} computes with its weight transformed in its own forward "
            f"(through {sorted(recorder.uses - _WEIGHT_READS) or 'no linear/convolution product'}), so a zeroed "
            "weight would not be a removed one; it is left dense")
