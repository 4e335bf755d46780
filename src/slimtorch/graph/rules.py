"""One small channel rule per layer type, and the table from op name to rule.

Layer rules say which parameter dims read a channel label (a consumer: a conv's input channels) and which
produce a new one (a conv's filters). Shape and elementwise rules are in :mod:`slimtorch.graph.shape_rules`.
An op without a rule freezes every channel it touches and is reported, so nothing is silently broken.
"""

from __future__ import annotations

from fractions import Fraction

from slimtorch.graph import shape_rules as sr
from slimtorch.graph.labels import Misaligned, scale_label
from slimtorch.graph.trace import Op, Ref


def _ref(x) -> Ref | None:
    return x if isinstance(x, Ref) else None


def linear(b, op: Op) -> None:
    """y = x W^T + b: x's last dim couples with W's dim 1; y's last dim is W's dim 0 (a producer)."""
    x, w, bias = _ref(sr.arg(op, 0, "input")), _ref(sr.arg(op, 1, "weight")), _ref(sr.arg(op, 2, "bias"))
    xd, wd = b.dims(x), b.dims(w)
    where = f"linear {op.module or 'forward'}"
    b.unify(xd[-1], wd[1], b.shape(w)[1], where)
    if bias is not None:
        b.unify(wd[0], b.dims(bias)[0], b.shape(w)[0], where)
    b.mark_producer(wd[0], op.module)
    b.set(op.outputs[0], xd[:-1] + [wd[0]])


def conv(b, op: Op) -> None:
    """Convolutions: plain (groups=1), depthwise (groups=in_channels, output tied to input) or grouped
    (input channels and filters removed evenly from every group)."""
    x, w, bias = _ref(sr.arg(op, 0, "input")), _ref(sr.arg(op, 1, "weight")), _ref(sr.arg(op, 2, "bias"))
    groups = int(sr.arg(op, 6, "groups", 1))
    xd, wd = b.dims(x), b.dims(w)
    cin, cout = b.shape(x)[1], b.shape(w)[0]
    where = f"conv {op.module or 'forward'}"
    if groups == 1:
        b.unify(xd[1], wd[1], cin, where)
        out = wd[0]
        b.mark_producer(out, op.module)
    elif groups == cin:
        try:
            out = None if xd[1] is None else scale_label(xd[1], Fraction(cout // cin))
        except Misaligned:
            b.freeze(xd[1], f"{where}: depthwise channels are not aligned")
            out = None
        b.unify(out, wd[0], cout, where)
    else:  # grouped: input channels are removed evenly from each group, filters too
        if xd[1] is not None and b.set_groups(xd[1], groups):
            b.grouped_inputs.append((w.id, groups, xd[1]))
        out = wd[0]
        b.set_groups(out, groups)
        b.mark_producer(out, op.module)
    if bias is not None:
        b.unify(out, b.dims(bias)[0], cout, where)
    b.set(op.outputs[0], [xd[0], out] + [None] * (len(b.shape(op.outputs[0])) - 2))


def conv_transpose(b, op: Op) -> None:
    """Transposed convolutions (groups=1): W is (in, out, k...)."""
    x, w, bias = _ref(sr.arg(op, 0, "input")), _ref(sr.arg(op, 1, "weight")), _ref(sr.arg(op, 2, "bias"))
    groups = int(sr.arg(op, 6, "groups", 1))
    if groups != 1:
        return sr.unsupported(b, op)
    xd, wd = b.dims(x), b.dims(w)
    b.unify(xd[1], wd[0], b.shape(x)[1], f"conv_transpose {op.module}")
    if bias is not None:
        b.unify(wd[1], b.dims(bias)[0], b.shape(w)[1], f"conv_transpose {op.module}")
    b.mark_producer(wd[1], op.module)
    b.set(op.outputs[0], [xd[0], wd[1]] + [None] * (len(b.shape(op.outputs[0])) - 2))


def batch_norm(b, op: Op) -> None:
    """BatchNorm/InstanceNorm: running stats, scale and shift follow dim 1."""
    x = _ref(sr.arg(op, 0, "input"))
    xd = b.dims(x)
    n = b.shape(x)[1]
    for index, name in ((1, "running_mean"), (2, "running_var"), (3, "weight"), (4, "bias")):
        p = _ref(sr.arg(op, index, name))
        if p is not None and len(b.shape(p)) == 1 and b.shape(p)[0] == n:
            b.unify(xd[1], b.dims(p)[0], n, f"norm {op.module}")
    b.set(op.outputs[0], xd)


def prelu(b, op: Op) -> None:
    """PReLU: one slope per channel, along dim 1 of the input (its only dim for a 1-D input), or one for all."""
    x, w = _ref(sr.arg(op, 0, "input")), _ref(sr.arg(op, 1, "weight"))
    xd = b.dims(x)
    if w is not None and b.shape(w)[0] > 1:
        channel = 1 if len(xd) >= 2 else 0
        b.unify(xd[channel], b.dims(w)[0], b.shape(w)[0], f"prelu {op.module}")
    b.set(op.outputs[0], xd)


def layer_norm(b, op: Op) -> None:
    """LayerNorm/RMSNorm: weight and bias follow the normalized (last) dims."""
    x = _ref(sr.arg(op, 0, "input"))
    xd = b.dims(x)
    for index, name in ((2, "weight"), (3, "bias")):
        p = _ref(sr.arg(op, index, name))
        if p is not None:
            pd = b.dims(p)
            for k in range(1, len(pd) + 1):
                b.unify(xd[-k], pd[-k], b.shape(p)[-k], f"norm {op.module}")
    b.set(op.outputs[0], xd)


def group_norm(b, op: Op) -> None:
    """GroupNorm: like BatchNorm, and channels are pruned evenly across the ``num_groups`` groups."""
    x = _ref(sr.arg(op, 0, "input"))
    xd = b.dims(x)
    n = b.shape(x)[1]
    b.set_groups(xd[1], int(sr.arg(op, 1, "num_groups")))
    for index, name in ((2, "weight"), (3, "bias")):
        p = _ref(sr.arg(op, index, name))
        if p is not None:
            b.unify(xd[1], b.dims(p)[0], n, f"norm {op.module}")
    b.set(op.outputs[0], xd)


def embedding(b, op: Op) -> None:
    """Embedding lookups: the output's last dim is the table's dim 1 (a producer)."""
    idx, w = _ref(sr.arg(op, 0, "input")), _ref(sr.arg(op, 1, "weight"))
    wd = b.dims(w)
    b.mark_producer(wd[1], op.module)
    b.set(op.outputs[0], [None] * len(b.shape(idx)) + [wd[1]])


def matmul(b, op: Op) -> None:
    """a @ b: batch dims couple, the contracted dims couple, the result keeps a's rows and b's columns."""
    x, y = sr.tensors(op)[:2]
    xs, ys = b.shape(x), b.shape(y)
    if len(xs) < 2 or len(ys) < 2:
        return sr.unsupported(b, op)
    xd, yd = b.dims(x), b.dims(y)
    out_shape = b.shape(op.outputs[0])
    where = f"matmul in {op.module or 'forward'}"
    b.unify(xd[-1], yd[-2], xs[-1], where)
    batch = _couple_batch(b, [(xd[:-2], xs[:-2]), (yd[:-2], ys[:-2])], out_shape[:-2], where)
    b.set(op.outputs[0], batch + [xd[-2], yd[-1]])


def addmm(b, op: Op) -> None:
    """bias + a @ W (Hugging Face Conv1D): a's columns couple with W's rows; W's columns produce channels."""
    bias, x, w = (_ref(sr.arg(op, i, n)) for i, n in enumerate(("input", "mat1", "mat2")))
    if x is None or w is None or len(b.shape(x)) != 2 or len(b.shape(w)) != 2:
        return sr.unsupported(b, op)
    xd, wd = b.dims(x), b.dims(w)
    where = f"addmm {op.module or 'forward'}"
    b.unify(xd[1], wd[0], b.shape(w)[0], where)
    if bias is not None and len(b.shape(bias)) == 1:
        b.unify(wd[1], b.dims(bias)[0], b.shape(w)[1], where)
    if w.id in b.trace.params:
        b.mark_producer(wd[1], op.module)
    b.set(op.outputs[0], [xd[0], wd[1]])


def sdpa(b, op: Op) -> None:
    """scaled_dot_product_attention(q, k, v): heads couple across q, k, v; q·k contract; v's dim is kept."""
    q, k, v = (_ref(sr.arg(op, i, n)) for i, n in enumerate(("query", "key", "value")))
    qd, kd, vd = b.dims(q), b.dims(k), b.dims(v)
    qs, ks, vs = b.shape(q), b.shape(k), b.shape(v)
    where = f"attention in {op.module or 'forward'}"
    b.unify(qd[-1], kd[-1], qs[-1], where)
    b.unify(kd[-2], vd[-2], ks[-2], where)
    mask = _ref(sr.arg(op, 3, "attn_mask"))
    if mask is not None:
        for label in b.dims(mask):
            if label is not None:
                b.freeze(label, f"{where}: attention mask")
    if len(qs) >= 3 and len(ks) >= 3 and qs[-3] != ks[-3]:  # grouped-query attention
        _share_kv_heads(b, (qd[-3], kd[-3], vd[-3]), qs[-3], ks[-3], where)
    batch = _couple_batch(b, [(qd[:-2], qs[:-2]), (kd[:-2], ks[:-2]), (vd[:-2], vs[:-2])],
                          b.shape(op.outputs[0])[:-2], where)
    b.set(op.outputs[0], batch + [qd[-2], vd[-1]])


def _share_kv_heads(b, heads, n_q: int, n_kv: int, where: str) -> None:
    """Grouped-query attention: query head ``i`` reads key/value head ``i // (n_q / n_kv)``, so a key/value head
    is removed with its own key, value and query heads (the query heads become the key/value space repeated);
    anything else (a single key/value head, uneven sharing) keeps the heads."""
    q, k, v = heads
    b.unify(k, v, n_kv, where)
    if n_q % n_kv or q is None or k is None or not b.spaces.repeat(q, k, n_q // n_kv):
        for label in heads:
            b.freeze(label, f"{where}: {n_q} query heads share {n_kv} key/value heads unevenly or in one head")


def _couple_batch(b, parts, out_shape, where) -> list:
    out: list = [None] * len(out_shape)
    for dims, shape in parts:
        for k in range(1, len(shape) + 1):
            if shape[-k] == out_shape[-k] and shape[-k] > 1:
                if out[-k] is None:
                    out[-k] = dims[-k]
                b.unify(out[-k], dims[-k], shape[-k], where)
    return out


#: op name -> rule
RULES = {
    "linear": linear,
    "conv1d": conv, "conv2d": conv, "conv3d": conv,
    "conv_transpose1d": conv_transpose, "conv_transpose2d": conv_transpose,
    "batch_norm": batch_norm, "instance_norm": batch_norm,
    "layer_norm": layer_norm, "rms_norm": layer_norm,
    "group_norm": group_norm,
    "prelu": prelu,
    "embedding": embedding,
    "matmul": matmul, "bmm": matmul, "mm": matmul, "addmm": addmm,
    "scaled_dot_product_attention": sdpa,
    "getitem": sr.getitem,
    "cat": sr.cat, "concat": sr.cat, "concatenate": sr.cat,
    "stack": sr.stack,
    "unbind": sr.unbind,
    "split": sr.split, "chunk": sr.split, "tensor_split": sr.split, "split_with_sizes": sr.split, "narrow": sr.split,
    "expand": sr.expand, "expand_as": sr.expand, "broadcast_to": sr.expand, "repeat": sr.expand,
    **{name: sr.elementwise for name in sr.ELEMENTWISE},
    **{name: sr.factory for name in sr.FACTORIES},
    **{name: sr.reshape for name in sr.RESHAPES},
    **{name: sr.permute for name in sr.PERMUTES},
    **{name: sr.reduction for name in sr.REDUCTIONS},
    **{name: sr.pool for name in sr.POOLS},
}


def rule_for(op: Op):
    """The rule for an op, or the freezing fallback."""
    return RULES.get(op.name, sr.unsupported)
