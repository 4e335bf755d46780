"""Channel rules for shape and elementwise ops: how an op couples, builds, slices or scales channel labels.

A rule reads the labels of its inputs from the builder (``b.dims(ref)``), couples what must be removed
together (``b.unify``), and sets the labels of its outputs (``b.set``). The layer rules and the dispatch
table are in :mod:`slimtorch.graph.rules`.
"""

from __future__ import annotations

from fractions import Fraction
from math import prod
from typing import Any

from slimtorch.graph.labels import Misaligned, scale_label, slice_label
from slimtorch.graph.trace import Op, Ref

ELEMENTWISE = {
    "add", "sub", "mul", "div", "truediv", "true_divide", "relu", "relu6", "gelu", "silu", "sigmoid", "tanh",
    "hardswish", "hardsigmoid", "hardtanh", "leaky_relu", "elu", "selu", "mish", "softplus", "dropout",
    "dropout1d", "dropout2d", "dropout3d", "alpha_dropout", "feature_alpha_dropout", "clamp", "clip", "neg", "exp",
    "sqrt", "rsqrt", "pow", "abs", "masked_fill", "contiguous", "clone", "to", "float", "half", "bfloat16", "type",
    "type_as", "detach", "data", "erf", "log", "sin", "cos", "maximum", "minimum", "where", "square", "reciprocal",
    "clamp_min", "clamp_max", "addcmul", "lerp", "requires_grad", "copy",
}
FACTORIES = {"zeros", "ones", "empty", "full", "arange", "zeros_like", "ones_like", "empty_like", "full_like",
             "rand", "randn", "rand_like", "randn_like", "tensor", "as_tensor", "linspace", "tril", "triu", "new_zeros",
             "new_ones", "new_empty", "new_full", "new_tensor", "ne", "eq", "lt", "gt", "le", "ge", "logical_not",
             "isnan", "isinf", "bool", "long", "int", "argmax", "argmin", "cumsum"}
RESHAPES = {"view", "reshape", "flatten", "unflatten", "squeeze", "unsqueeze", "view_as", "reshape_as"}
PERMUTES = {"permute", "transpose", "swapaxes", "swapdims", "t", "T", "mT", "movedim"}
REDUCTIONS = {"mean", "sum", "amax", "amin", "max", "min", "std", "var", "norm", "logsumexp", "prod", "softmax",
              "log_softmax", "nansum", "nanmean", "median", "any", "all"}
POOLS = {"max_pool1d", "max_pool2d", "max_pool3d", "avg_pool1d", "avg_pool2d", "avg_pool3d", "adaptive_avg_pool1d",
         "adaptive_avg_pool2d", "adaptive_avg_pool3d", "adaptive_max_pool1d", "adaptive_max_pool2d",
         "adaptive_max_pool2d_with_indices", "max_pool2d_with_indices", "interpolate", "upsample",
         "upsample_nearest2d", "upsample_bilinear2d", "lp_pool2d"}


def arg(op: Op, index: int, name: str, default: Any = None) -> Any:
    """An op argument given positionally at ``index`` or by keyword ``name``."""
    if len(op.args) > index:
        return op.args[index]
    return op.kwargs.get(name, default)


def tensors(op: Op) -> list[Ref]:
    """The tensor arguments of an op, in order (lists flattened)."""
    return [Ref(i) for i in op.refs()]


def elementwise(b, op: Op) -> None:
    """Broadcasting ops: dims of equal size, aligned from the right, carry the same channels."""
    out = op.outputs[0]
    shape = b.shape(out)
    labels: list = [None] * len(shape)
    for ref in tensors(op):
        dims, s = b.dims(ref), b.shape(ref)
        for k in range(1, len(s) + 1):
            if k > len(shape) or s[-k] != shape[-k] or s[-k] == 1:
                continue
            if labels[-k] is None and dims[-k] is not None:
                labels[-k] = dims[-k]
    for ref in tensors(op):
        dims, s = b.dims(ref), b.shape(ref)
        for k in range(1, min(len(s), len(shape)) + 1):
            if s[-k] == shape[-k] and s[-k] > 1:
                b.unify(labels[-k], dims[-k], shape[-k], f"{op.name} in {op.module or 'forward'}")
    for o in op.outputs:
        b.set(o, labels if b.shape(o) == shape else None)


def reshape(b, op: Op) -> None:
    """view/reshape/flatten/squeeze: match dims by products; split or merge labels along the way."""
    src = tensors(op)[0]
    a, c = b.shape(src), b.shape(op.outputs[0])
    dims = b.dims(src)
    out: list = [None] * len(c)
    i = j = 0
    while i < len(a) or j < len(c):
        i0, j0 = i, j
        pa = a[i] if i < len(a) else 1
        pc = c[j] if j < len(c) else 1
        i, j = i + 1, j + 1
        while pa != pc:
            if pa < pc and i < len(a):
                pa, i = pa * a[i], i + 1
            elif j < len(c):
                pc, j = pc * c[j], j + 1
            else:
                break
        src_dims = [k for k in range(i0, min(i, len(a))) if a[k] > 1]
        dst_dims = [k for k in range(j0, min(j, len(c))) if c[k] > 1]
        labelled = [k for k in src_dims if dims[k] is not None]
        if not labelled:
            continue
        why = f"{op.name} in {op.module or 'forward'}"
        try:
            parts = _fused_parts(b, dims[src_dims[0]], c[dst_dims[0]], why) if (
                len(src_dims) == 1 and len(dst_dims) >= 3 and c[dst_dims[0]] <= 3) else None
            if parts is not None:  # (parts, heads, head_dim): the heads of every part are removed together
                out[dst_dims[1]] = scale_label(parts[0], Fraction(1, prod(c[k] for k in dst_dims[2:])))
                b.set_block(out[dst_dims[1]])
            elif len(src_dims) == 1 and dst_dims:
                inner = prod(c[k] for k in dst_dims[1:])
                out[dst_dims[0]] = scale_label(dims[src_dims[0]], Fraction(1, inner))
                b.set_block(out[dst_dims[0]])
            elif len(dst_dims) == 1 and labelled == [src_dims[0]]:
                inner = prod(a[k] for k in src_dims[1:])
                out[dst_dims[0]] = scale_label(dims[src_dims[0]], Fraction(inner))
            else:
                raise Misaligned(why)
        except Misaligned:
            for k in labelled:
                b.freeze(dims[k], f"{why}: reshape mixes channel dims")
    b.set(op.outputs[0], out)


def _fused_parts(b, label: Any, n_parts: int, why: str) -> list | None:
    """A fused q/k/v (or k/v) projection viewed as ``(parts, heads, head_dim)``: split its space into equal parts
    and couple them, so head ``h`` of every part goes together (query head h meets key head h). None when the
    space is not one whole, unconstrained space."""
    size = b.spaces.size[label[0][0]] if label and len(label) == 1 and label[0][0] is not None else 0
    parts = b.spaces.split_space(label, [size // n_parts] * n_parts) if size and size % n_parts == 0 else None
    for part in (parts or [])[1:]:
        b.unify(parts[0], part, size // n_parts, why)
    return parts


def unbind(b, op: Op) -> None:
    """unbind(dim): each output drops the dim; a dim holding channels is frozen (one channel picked)."""
    src = tensors(op)[0]
    dims = b.dims(src)
    dim = int(arg(op, 1, "dim", 0)) % len(dims)
    if dims[dim] is not None:
        b.freeze(dims[dim], f"unbind picks one channel in {op.module or 'forward'}")
    for o in op.outputs:
        b.set(o, dims[:dim] + dims[dim + 1:])


def permute(b, op: Op) -> None:
    """permute/transpose/.T: reorder the labels."""
    src = tensors(op)[0]
    dims = b.dims(src)
    n = len(dims)
    order = list(range(n))
    if op.name == "permute":
        perm = op.args[1:] if len(op.args) > 2 or isinstance(op.args[1], int) else op.args[1]
        order = [int(p) % n for p in perm]
    elif op.name == "T":  # reverses every dim (deprecated above 2-D, still valid): the 2-D transpose for matrices
        order = order[::-1]
    elif op.name == "t" and n == 2 or op.name == "mT":
        order[-1], order[-2] = order[-2], order[-1]
    elif op.name in {"transpose", "swapaxes", "swapdims"}:
        d0, d1 = int(arg(op, 1, "dim0")) % n, int(arg(op, 2, "dim1")) % n
        order[d0], order[d1] = order[d1], order[d0]
    elif op.name == "movedim":
        s, d = arg(op, 1, "source"), arg(op, 2, "destination")
        s, d = ([s], [d]) if isinstance(s, int) else (list(s), list(d))
        rest = [k for k in range(n) if k not in [x % n for x in s]]
        order = [None] * n
        for x, y in zip(s, d, strict=True):
            order[y % n] = x % n
        it = iter(rest)
        order = [next(it) if o is None else o for o in order]
    b.set(op.outputs[0], [dims[k] for k in order])


def expand(b, op: Op) -> None:
    """expand/broadcast_to/repeat: dims that keep their size keep their label; repeated ones are frozen."""
    src = tensors(op)[0]
    dims, s = b.dims(src), b.shape(src)
    shape = b.shape(op.outputs[0])
    out: list = [None] * len(shape)
    for k in range(1, len(s) + 1):
        if s[-k] == shape[-k]:
            out[-k] = dims[-k]
        elif dims[-k] is not None:
            b.freeze(dims[-k], f"{op.name} repeats channels in {op.module or 'forward'}")
    b.set(op.outputs[0], out)


def reduction(b, op: Op) -> None:
    """mean/sum/softmax ...: a reduced channel dim is frozen (the result would depend on the channel count)."""
    src = tensors(op)[0]
    dims = b.dims(src)
    n = len(dims)
    dim = arg(op, 1, "dim")
    if isinstance(dim, Ref):  # torch.max(a, b) is elementwise
        return elementwise(b, op)
    reduced = list(range(n)) if dim is None else [int(d) % n for d in (dim if isinstance(dim, list | tuple) else [dim])]
    for k in reduced:
        if dims[k] is not None:
            b.freeze(dims[k], f"{op.name} reduces over channels in {op.module or 'forward'}")
    for o in op.outputs:
        shape = b.shape(o)
        if len(shape) == n:
            b.set(o, [None if k in reduced else dims[k] for k in range(n)])
        else:
            b.set(o, [dims[k] for k in range(n) if k not in reduced] if len(shape) == n - len(reduced) else None)


def pool(b, op: Op) -> None:
    """Pooling/resizing: batch and channel dims pass through, spatial dims hold no channels."""
    src = tensors(op)[0]
    dims = b.dims(src)
    for o in op.outputs[:1]:
        b.set(o, dims[:2] + [None] * (len(b.shape(o)) - 2))


def getitem(b, op: Op) -> None:
    """Basic indexing with ints, slices, None and Ellipsis; tensor indices fall back to freezing."""
    src = tensors(op)[0]
    dims, s = b.dims(src), b.shape(src)
    idx = op.args[1] if isinstance(op.args[1], tuple) else (op.args[1],)
    if any(isinstance(i, Ref | list) for i in idx):
        return unsupported(b, op)
    n_real = sum(1 for i in idx if i is not None and i is not Ellipsis)
    expanded: list = []
    for i in idx:
        expanded.extend([slice(None)] * (len(s) - n_real) if i is Ellipsis else [i])
    expanded += [slice(None)] * (len(s) - sum(1 for i in expanded if i is not None))
    out, k = [], 0
    for i in expanded:
        if i is None:
            out.append(None)
            continue
        label = dims[k]
        if isinstance(i, int):
            if label is not None:
                b.freeze(label, f"indexing picks one channel in {op.module or 'forward'}")
        else:
            start, stop, step = i.indices(s[k])
            if label is not None and (start, stop, step) != (0, s[k], 1):
                try:
                    label = slice_label(label, start, stop) if step == 1 else None
                except Misaligned:
                    label = None
                if label is None:
                    b.freeze(dims[k], f"slicing cuts channels in {op.module or 'forward'}")
            out.append(label)
        k += 1
    b.set(op.outputs[0], out)


def split(b, op: Op) -> None:
    """split/chunk/tensor_split/narrow: each output holds consecutive entries of the split dim."""
    src = tensors(op)[0]
    dims, s = b.dims(src), b.shape(src)
    splits = {"split", "chunk", "tensor_split", "split_with_sizes"}
    dim = arg(op, 2, "dim", 0) if op.name in splits else arg(op, 1, "dim")
    dim = int(dim) % len(s)
    start = int(arg(op, 2, "start", 0)) if op.name == "narrow" else 0
    sizes = [b.shape(o)[dim] for o in op.outputs]
    if op.name != "narrow" and dims[dim] is not None and sum(sizes) == s[dim] and len(sizes) > 1:
        parts = b.spaces.split_space(dims[dim], sizes)
        if parts is not None:  # a fused projection split into parts: each part is its own space
            for o, part in zip(op.outputs, parts, strict=True):
                b.set(o, dims[:dim] + [part] + dims[dim + 1:])
            return
    for o in op.outputs:
        size = b.shape(o)[dim]
        out = list(dims)
        if dims[dim] is not None:
            try:
                out[dim] = slice_label(dims[dim], start, start + size)
            except Misaligned:
                b.freeze(dims[dim], f"{op.name} cuts channels in {op.module or 'forward'}")
                out[dim] = None
        b.set(o, out)
        start += size


def cat(b, op: Op) -> None:
    """cat/concat: the concatenated dim lists its parts' labels in order; other dims are coupled."""
    parts = [Ref(i) for i in op.refs()]
    parts = [p for p in parts if b.shape(p) and len(b.shape(p)) == len(b.shape(op.outputs[0]))]
    shape = b.shape(op.outputs[0])
    dim = int(arg(op, 1, "dim", 0)) % len(shape)
    out: list = [None] * len(shape)
    joined = []
    for p in parts:
        label = b.dims(p)[dim]
        joined.extend(label if label is not None else ((None, 0, b.shape(p)[dim], Fraction(1)),))
    out[dim] = tuple(joined) if any(seg[0] is not None for seg in joined) else None
    for k in range(len(shape)):
        if k != dim:
            for p in parts:
                if out[k] is None:
                    out[k] = b.dims(p)[k]
                b.unify(out[k], b.dims(p)[k], shape[k], f"cat in {op.module or 'forward'}")
    b.set(op.outputs[0], out)


def stack(b, op: Op) -> None:
    """stack: all dims are coupled across the parts; the new dim holds no channels."""
    parts = [Ref(i) for i in op.refs()]
    shape = b.shape(op.outputs[0])
    dim = int(arg(op, 1, "dim", 0)) % len(shape)
    base: list = list(b.dims(parts[0]))
    for p in parts[1:]:
        for k, label in enumerate(b.dims(p)):
            b.unify(base[k], label, b.shape(p)[k], f"stack in {op.module or 'forward'}")
    b.set(op.outputs[0], base[:dim] + [None] + base[dim:])


def unsupported(b, op: Op) -> None:
    """No rule: freeze every channel the op touches and report it."""
    touched = []
    for ref in tensors(op):
        for label in b.dims(ref):
            if label is not None:
                touched.append(label)
                b.freeze(label, f"op {op.name!r} in {op.module or 'forward'} has no channel rule")
    if touched:
        b.report(op, touched)
    for o in op.outputs:
        b.set(o, None)


def factory(b, op: Op) -> None:
    """Ops whose outputs hold no channels (constructors, comparisons, index outputs)."""
    for o in op.outputs:
        b.set(o, None)

