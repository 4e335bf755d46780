"""Factorized layers: small containers of plain ``nn.Linear`` / ``nn.Conv2d`` layers.

They hold state only (the factors are computed by ``slimtorch.lowrank.svd`` and ``.conv``). Being plain
layers in sequence, they run on the same dense kernels as the original, fine-tune like any layer, export to
ONNX as ordinary Gemm/Conv nodes, and save/load through the manifest (``cls(**manifest_args())``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from slimtorch.io.manifest import register_module
from slimtorch.layer_kinds import pad_same


def _pair(v: Any) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


class _Factorized(nn.Module):
    """Shared parts: parameter counting for reports, TF-"same" padding. Not registered; subclasses are."""

    def weight_counts(self) -> tuple[int, int]:
        """``(0, 0)``: the container holds no tensors of its own; its child layers are counted as usual.

        Defining it marks the container as one layer in ``slimtorch.measure`` layer tables (with its rank).
        """
        return 0, 0

    def _conv_args(self) -> dict[str, Any]:
        padding = self.padding if isinstance(self.padding, str) else list(self.padding)
        return {
            "in_channels": self.in_channels, "out_channels": self.out_channels,
            "kernel_size": list(self.kernel_size), "stride": list(self.stride), "padding": padding,
            "dilation": list(self.dilation), "bias": self.has_bias, "padding_mode": self.padding_mode,
        }

    def _pad(self, x: torch.Tensor) -> torch.Tensor:
        return pad_same(x, self.kernel_size, self.stride, self.dilation) if self.same_pad else x

    def _init_conv(self, in_channels, out_channels, kernel_size, stride, padding, dilation, bias, padding_mode):
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.kernel_size, self.stride, self.dilation = _pair(kernel_size), _pair(stride), _pair(dilation)
        self.padding = padding if isinstance(padding, str) else _pair(padding)
        self.has_bias, self.padding_mode = bool(bias), padding_mode
        # pad the input TensorFlow-"same" style before the factors: set (and recorded for slimtorch.load) when the
        # replaced convolution padded that way in its own forward; the factors then have padding 0
        self.same_pad = False


@register_module
class LowRankLinear(_Factorized):
    """``Linear(in, out)`` as ``second(first(x))``: ``first`` is in -> rank (``V_r^T``, no bias), ``second``
    is rank -> out (``U_r S_r`` and the original bias).

    Example:
        >>> layer = LowRankLinear(768, 3072, rank=192)
        >>> layer(torch.randn(2, 768)).shape
        torch.Size([2, 3072])
    """

    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool = True) -> None:
        super().__init__()
        self.in_features, self.out_features, self.rank = int(in_features), int(out_features), int(rank)
        self.first = nn.Linear(self.in_features, self.rank, bias=False)
        self.second = nn.Linear(self.rank, self.out_features, bias=bias)

    def manifest_args(self) -> dict[str, Any]:
        """Constructor arguments for ``slimtorch.save``."""
        return {"in_features": self.in_features, "out_features": self.out_features, "rank": self.rank,
                "bias": self.second.bias is not None}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.second(self.first(x))  # (..., in) -> (..., rank) -> (..., out)


@register_module
class LowRankConv2d(_Factorized):
    """Channel SVD of a conv: the k x k conv to ``rank`` channels (``first``), then a 1x1 conv to the
    outputs with the original bias (``second``)."""

    def __init__(self, in_channels: int, out_channels: int, rank: int, kernel_size: Any, stride: Any = 1,
                 padding: Any = 0, dilation: Any = 1, bias: bool = True, padding_mode: str = "zeros") -> None:
        super().__init__()
        self._init_conv(in_channels, out_channels, kernel_size, stride, padding, dilation, bias, padding_mode)
        self.rank = int(rank)
        self.first = nn.Conv2d(self.in_channels, self.rank, self.kernel_size, self.stride, self.padding,
                               self.dilation, bias=False, padding_mode=padding_mode)
        self.second = nn.Conv2d(self.rank, self.out_channels, 1, bias=bias)

    def manifest_args(self) -> dict[str, Any]:
        """Constructor arguments for ``slimtorch.save``."""
        return {**self._conv_args(), "rank": self.rank}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.second(self.first(self._pad(x)))


@register_module
class Tucker2Conv2d(_Factorized):
    """Tucker-2 of a conv: 1x1 ``reduce`` (in -> r_in), k x k ``core`` (r_in -> r_out, the original stride,
    padding and dilation), 1x1 ``expand`` (r_out -> out, the original bias)."""

    def __init__(self, in_channels: int, out_channels: int, ranks: Any, kernel_size: Any, stride: Any = 1,
                 padding: Any = 0, dilation: Any = 1, bias: bool = True, padding_mode: str = "zeros") -> None:
        super().__init__()
        self._init_conv(in_channels, out_channels, kernel_size, stride, padding, dilation, bias, padding_mode)
        self.ranks = (int(ranks[0]), int(ranks[1]))
        r_in, r_out = self.ranks
        self.reduce = nn.Conv2d(self.in_channels, r_in, 1, bias=False)
        self.core = nn.Conv2d(r_in, r_out, self.kernel_size, self.stride, self.padding, self.dilation,
                              bias=False, padding_mode=padding_mode)
        self.expand = nn.Conv2d(r_out, self.out_channels, 1, bias=bias)

    @property
    def rank(self) -> int:
        """The core's output rank (``ranks[1]``), for layer tables."""
        return self.ranks[1]

    def manifest_args(self) -> dict[str, Any]:
        """Constructor arguments for ``slimtorch.save``."""
        return {**self._conv_args(), "ranks": list(self.ranks)}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.expand(self.core(self.reduce(self._pad(x))))


def _split_padding(padding: Any) -> tuple[Any, Any]:
    """Padding of the (kh x 1) and (1 x kw) convs that together pad like the original."""
    if isinstance(padding, str):
        return padding, padding
    ph, pw = _pair(padding)
    return (ph, 0), (0, pw)


@register_module
class SpatialSVDConv2d(_Factorized):
    """Spatial SVD of a conv: a kh x 1 ``vertical`` conv to ``rank`` channels, then a 1 x kw ``horizontal``
    conv to the outputs (the original bias); stride, padding and dilation are split between them."""

    def __init__(self, in_channels: int, out_channels: int, rank: int, kernel_size: Any, stride: Any = 1,
                 padding: Any = 0, dilation: Any = 1, bias: bool = True, padding_mode: str = "zeros") -> None:
        super().__init__()
        self._init_conv(in_channels, out_channels, kernel_size, stride, padding, dilation, bias, padding_mode)
        self.rank = int(rank)
        (kh, kw), (sh, sw), (dh, dw) = self.kernel_size, self.stride, self.dilation
        pad_v, pad_h = _split_padding(self.padding)
        self.vertical = nn.Conv2d(self.in_channels, self.rank, (kh, 1), (sh, 1), pad_v, (dh, 1), bias=False,
                                  padding_mode=padding_mode)
        self.horizontal = nn.Conv2d(self.rank, self.out_channels, (1, kw), (1, sw), pad_h, (1, dw), bias=bias,
                                    padding_mode=padding_mode)

    def manifest_args(self) -> dict[str, Any]:
        """Constructor arguments for ``slimtorch.save``."""
        return {**self._conv_args(), "rank": self.rank}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.horizontal(self.vertical(self._pad(x)))
