"""Low-rank decomposition: SVD for linear layers, Tucker-2, spatial SVD and channel SVD for convolutions.

``slimtorch.decompose(model, LowRank(...))`` is the entry point; the math lives in :mod:`.svd`,
:mod:`.conv` and :mod:`.rank` as pure functions on tensors.
"""

from slimtorch.lowrank.apply import decompose_lowrank  # registers the decompose handler
from slimtorch.lowrank.config import LowRank
from slimtorch.lowrank.modules import LowRankConv2d, LowRankLinear, SpatialSVDConv2d, Tucker2Conv2d

__all__ = ["LowRank", "decompose_lowrank", "LowRankConv2d", "LowRankLinear", "SpatialSVDConv2d", "Tucker2Conv2d"]
