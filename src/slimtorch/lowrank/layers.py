"""One decomposable layer: its method, ranks, costs and the factorized module built from its spectrum.

A rank is an ``int`` for SVD and spatial SVD and a pair ``(r_in, r_out)`` for Tucker-2. Costs are weights
("params") or multiply-adds of the recorded forward ("flops", counted as 2 per multiply-add like
``torch.utils.flop_counter``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from slimtorch.lowrank import conv
from slimtorch.lowrank.modules import LowRankConv2d, LowRankLinear, SpatialSVDConv2d, Tucker2Conv2d
from slimtorch.lowrank.rank import energy_rank, ratio_rank
from slimtorch.lowrank.svd import Spectrum, Whitening, factors, spectrum

Rank = int | tuple[int, int]


@dataclass
class Layer:
    """A Linear or Conv2d chosen for factorization, with what the decomposition needs about it.

    Attributes:
        name: qualified module name.
        module: the plain ``nn.Linear``/``nn.Conv2d`` the layer computes (``slimtorch.layer_kinds.as_plain``):
            the layer itself, or for GPT-2's ``Conv1D`` a Linear with its transposed weight, or for a
            TF-"same" padded convolution a padding-0 Conv2d sharing its weight.
        method: "svd", "tucker" or "spatial_svd".
        in_positions: input positions (tokens, or batch x H x W) seen in the recorded forward; 0 if unknown.
        out_positions: output positions in the recorded forward; 0 if unknown.
        mid_positions: positions after the vertical conv of a spatial SVD (batch x H_out x W_in).
        white: whitening of the inputs' second moments (data-aware), else None.
        source: the layer as it is in the model, when ``module`` is its plain stand-in (hooks go there).
        same_pad: the layer pads its input TF-"same" style in its own forward (``module`` has padding 0).
    """

    name: str
    module: nn.Module
    method: str
    in_positions: int = 0
    out_positions: int = 0
    mid_positions: int = 0
    white: Whitening | None = None
    source: nn.Module | None = None
    same_pad: bool = False
    _spec: Spectrum | None = field(default=None, repr=False)
    _tucker_spectra: tuple[torch.Tensor, torch.Tensor] | None = field(default=None, repr=False)

    @property
    def in_model(self) -> nn.Module:
        """The module that sits at ``name`` in the model."""
        return self.module if self.source is None else self.source

    @property
    def weight(self) -> torch.Tensor:
        """The original weight (out, in) or (out, in, kh, kw)."""
        return self.module.weight

    def spectrum(self) -> Spectrum:
        """The (cached) SVD of the layer's matrix view for "svd" and "spatial_svd"."""
        if self._spec is None:
            w = self.weight.detach()
            matrix = w if w.dim() == 2 else conv.channel_matrix(w)
            if self.method == "spatial_svd":
                matrix = conv.spatial_matrix(w)
            self._spec = spectrum(matrix, self.white)
        return self._spec

    def tucker_spectra(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(cached) singular values of the output- and input-mode unfoldings, for Tucker-2 ranks."""
        if self._tucker_spectra is None:
            self._tucker_spectra = conv.tucker2_spectra(self.weight.detach(), self.white)
        return self._tucker_spectra

    def full_rank(self) -> Rank:
        """The rank that reproduces the layer exactly."""
        w = self.weight
        if self.method == "tucker":
            return int(w.shape[1]), int(w.shape[0])
        if self.method == "spatial_svd":
            return min(w.shape[0] * w.shape[3], w.shape[1] * w.shape[2])
        return min(w.shape[0], w[0].numel())

    def clip(self, rank: int) -> Rank:
        """A fixed rank, clipped to this layer (both Tucker-2 modes get it)."""
        full = self.full_rank()
        if isinstance(full, tuple):
            return min(rank, full[0]), min(rank, full[1])
        return min(rank, full)

    def rank_at_ratio(self, ratio: float) -> Rank:
        """The rank at a fraction 0-1 of the full rank (per mode for Tucker-2)."""
        full = self.full_rank()
        if isinstance(full, tuple):
            return ratio_rank(full[0], ratio), ratio_rank(full[1], ratio)
        return ratio_rank(full, ratio)

    def rank_at_energy(self, energy: float) -> Rank:
        """The smallest rank keeping ``energy`` of the squared spectrum (per mode for Tucker-2)."""
        if self.method == "tucker":
            s_out, s_in = self.tucker_spectra()
            return energy_rank(s_in, energy), energy_rank(s_out, energy)
        return energy_rank(self.spectrum().s, energy)

    def dense_cost(self, metric: str) -> float:
        """Weights ("params") or FLOPs ("flops") of the dense layer, bias left out."""
        per_position = self.weight.numel()
        return float(per_position if metric == "params" else 2 * per_position * self.out_positions)

    def cost(self, rank: Rank, metric: str) -> float:
        """Weights or FLOPs of the factorized layer at ``rank`` (bias left out, as in :meth:`dense_cost`)."""
        w = self.weight
        out, cin = int(w.shape[0]), int(w.shape[1])
        kh, kw = (int(w.shape[2]), int(w.shape[3])) if w.dim() == 4 else (1, 1)
        if self.method == "tucker":
            r_in, r_out = rank
            first, second = cin * r_in, r_in * r_out * kh * kw + r_out * out
            first_at, second_at = self.in_positions, self.out_positions
        elif self.method == "spatial_svd":
            first, second = rank * cin * kh, out * rank * kw
            first_at, second_at = self.mid_positions, self.out_positions
        else:
            first, second = rank * cin * kh * kw, out * rank
            first_at = second_at = self.out_positions
        if metric == "params":
            return float(first + second)
        return float(2 * (first * first_at + second * second_at))

    def pays_off(self, rank: Rank) -> bool:
        """True when the factorization has fewer weights and, if the forward was recorded, fewer FLOPs."""
        fewer_params = self.cost(rank, "params") < self.dense_cost("params")
        if not self.out_positions:
            return fewer_params
        return fewer_params and self.cost(rank, "flops") < self.dense_cost("flops")

    def build(self, rank: Rank) -> nn.Module:
        """The factorized module at ``rank``, with the original's bias, dtype and device."""
        m = self.module
        w = m.weight.detach()
        bias = m.bias is not None
        if isinstance(m, nn.Linear):
            new: nn.Module = LowRankLinear(m.in_features, m.out_features, rank, bias=bias)
            a, b = factors(self.spectrum(), rank)
            tensors = {"first.weight": b, "second.weight": a}
        else:
            kw: dict[str, Any] = dict(kernel_size=m.kernel_size, stride=m.stride, padding=m.padding,
                                      dilation=m.dilation, bias=bias, padding_mode=m.padding_mode)
            if self.method == "tucker":
                new = Tucker2Conv2d(m.in_channels, m.out_channels, rank, **kw)
                reduce, core, expand = conv.tucker2(w, rank, self.white)
                tensors = {"reduce.weight": reduce, "core.weight": core, "expand.weight": expand}
            elif self.method == "spatial_svd":
                new = SpatialSVDConv2d(m.in_channels, m.out_channels, rank, **kw)
                vertical, horizontal = conv.spatial_weights(*factors(self.spectrum(), rank), w.shape)
                tensors = {"vertical.weight": vertical, "horizontal.weight": horizontal}
            else:
                new = LowRankConv2d(m.in_channels, m.out_channels, rank, **kw)
                first, second = conv.channel_weights(*factors(self.spectrum(), rank), w.shape)
                tensors = {"first.weight": first, "second.weight": second}
        if bias:
            tensors[_last(new) + ".bias"] = m.bias.detach()
        state = {k: v.to(dtype=w.dtype, device=w.device) for k, v in tensors.items()}
        new.load_state_dict(state)
        return new.to(device=w.device, dtype=w.dtype).train(m.training)


def _last(module: nn.Module) -> str:
    """Name of the container's last child (the one that carries the bias)."""
    return list(module._modules)[-1]
