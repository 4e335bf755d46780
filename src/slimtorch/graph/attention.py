"""Multi-head attention with separate q/k/v/out projections, so heads can be removed like any channel.

``nn.MultiheadAttention`` keeps q, k and v in one ``in_proj_weight`` and ties the number of heads to
``embed_dim``, so a head cannot be removed without changing the residual width. Structured pruning swaps
it for :class:`SlimMultiheadAttention` (same call signature and outputs, exactly the same numbers), whose
``q_proj``/``k_proj``/``v_proj``/``out_proj`` are ordinary ``nn.Linear`` layers that the graph sees.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from slimtorch.graph.trace import untraced
from slimtorch.io.manifest import register_module


@register_module
class SlimMultiheadAttention(nn.Module):
    """Drop-in replacement for ``nn.MultiheadAttention`` with independent projection widths.

    Args:
        embed_dim: input width of the query (and output width of ``out_proj``).
        num_heads: number of heads.
        head_dim: width of one head.
        kdim: input width of the key; vdim: of the value (default ``embed_dim``).
        out_dim: output width (default ``embed_dim``).
        bias: projections have biases.
        dropout: dropout on the attention weights (training only).
        batch_first: inputs are (batch, seq, feature) instead of (seq, batch, feature).
    """

    in_proj_bias = None  # nn.TransformerEncoderLayer reads this to decide against its fused fast path

    def __init__(self, embed_dim: int, num_heads: int, head_dim: int, kdim: int | None = None,
                 vdim: int | None = None, out_dim: int | None = None, bias: bool = True, dropout: float = 0.0,
                 batch_first: bool = False) -> None:
        super().__init__()
        inner = num_heads * head_dim
        self.q_proj = nn.Linear(embed_dim, inner, bias=bias)
        self.k_proj = nn.Linear(kdim or embed_dim, inner, bias=bias)
        self.v_proj = nn.Linear(vdim or embed_dim, inner, bias=bias)
        self.out_proj = nn.Linear(inner, out_dim or embed_dim, bias=bias)
        self.num_heads, self.head_dim = num_heads, head_dim
        self.embed_dim = out_dim or embed_dim
        self.kdim, self.vdim = kdim or embed_dim, vdim or embed_dim
        self.dropout, self.batch_first = dropout, batch_first

    @classmethod
    def from_torch(cls, mha: nn.MultiheadAttention) -> SlimMultiheadAttention:
        """Build the exact equivalent of an ``nn.MultiheadAttention`` (without bias_k/v or zero attention)."""
        e, h = mha.embed_dim, mha.num_heads
        bias = mha.in_proj_bias is not None
        new = cls(e, h, e // h, mha.kdim, mha.vdim, e, bias, mha.dropout, mha.batch_first)
        with torch.no_grad():
            if mha._qkv_same_embed_dim:
                wq, wk, wv = mha.in_proj_weight.chunk(3)
            else:
                wq, wk, wv = mha.q_proj_weight, mha.k_proj_weight, mha.v_proj_weight
            for proj, w in zip((new.q_proj, new.k_proj, new.v_proj), (wq, wk, wv), strict=True):
                proj.weight.copy_(w)
            if bias:
                for proj, b in zip((new.q_proj, new.k_proj, new.v_proj), mha.in_proj_bias.chunk(3), strict=True):
                    proj.bias.copy_(b)
                new.out_proj.bias.copy_(mha.out_proj.bias)
            new.out_proj.weight.copy_(mha.out_proj.weight)
        return new.to(mha.out_proj.weight.dtype)

    def manifest_args(self) -> dict:
        """Constructor arguments for ``slimtorch.save``/``load``."""
        return {"embed_dim": self.q_proj.in_features, "num_heads": self.num_heads, "head_dim": self.head_dim,
                "kdim": self.k_proj.in_features, "vdim": self.v_proj.in_features,
                "out_dim": self.out_proj.out_features, "bias": self.q_proj.bias is not None,
                "dropout": self.dropout, "batch_first": self.batch_first}

    def resize_attributes(self) -> None:
        """Re-read the head count and widths after pruning cut the projections (whole heads: head_dim stays)."""
        self.num_heads = self.q_proj.out_features // self.head_dim
        self.embed_dim = self.out_proj.out_features
        self.kdim, self.vdim = self.k_proj.in_features, self.v_proj.in_features

    def forward(self, query, key, value, key_padding_mask=None, need_weights=True, attn_mask=None,
                average_attn_weights=True, is_causal=False):
        """Same arguments and results as ``nn.MultiheadAttention.forward``."""
        if not self.batch_first:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        b, tq, tk = query.shape[0], query.shape[1], key.shape[1]
        q = self.q_proj(query).view(b, tq, self.num_heads, self.head_dim).transpose(1, 2)  # (B, H, Tq, D)
        k = self.k_proj(key).view(b, tk, self.num_heads, self.head_dim).transpose(1, 2)  # (B, H, Tk, D)
        v = self.v_proj(value).view(b, tk, self.num_heads, self.head_dim).transpose(1, 2)  # (B, H, Tk, D)
        mask = _merge_masks(attn_mask, key_padding_mask, b, self.num_heads, tq, tk, q.dtype)
        drop = self.dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=drop,
                                             is_causal=is_causal and mask is None)
        out = self.out_proj(out.transpose(1, 2).reshape(b, tq, self.num_heads * self.head_dim))  # (B, Tq, E)
        weights = None
        if need_weights:
            with untraced():  # a side output: averaging over heads must not freeze the heads
                scores = q @ k.transpose(-2, -1) / self.head_dim**0.5
                weights = torch.softmax(scores + mask if mask is not None else scores, dim=-1)
                weights = weights.mean(1) if average_attn_weights else weights
        if not self.batch_first:
            out = out.transpose(0, 1)
        return out, weights


def _merge_masks(attn_mask, key_padding_mask, b, h, tq, tk, dtype):
    """One additive float mask of shape (B, H, Tq, Tk) (or broadcastable), or None."""
    mask = None
    if attn_mask is not None:
        mask = _additive(attn_mask, dtype)
        if mask.dim() == 3:  # (B*H, Tq, Tk)
            mask = mask.view(b, h, tq, tk)
    if key_padding_mask is not None:
        pad = _additive(key_padding_mask, dtype).view(b, 1, 1, tk)
        mask = pad if mask is None else mask + pad
    return mask


def _additive(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(mask, float("-inf"))
    return mask.to(dtype)


def convert_attention(model: nn.Module, names: set[str] | None = None) -> list[str]:
    """Replace ``nn.MultiheadAttention`` modules (all, or those in ``names``) by the equivalent
    :class:`SlimMultiheadAttention`, in place. Modules with ``add_bias_kv`` or ``add_zero_attn`` are kept.

    Returns:
        The names of the replaced modules.
    """
    done = []
    for name, module in list(model.named_modules()):
        if not isinstance(module, nn.MultiheadAttention) or (names is not None and name not in names):
            continue
        if module.bias_k is not None or module.add_zero_attn:
            continue
        model.set_submodule(name, SlimMultiheadAttention.from_torch(module))
        done.append(name)
    return done
