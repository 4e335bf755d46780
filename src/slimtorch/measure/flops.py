"""FLOPs and MACs of one forward pass, counted by ``torch.utils.flop_counter`` on a real forward."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from slimtorch.data import call


def count_flops(model: nn.Module, example_inputs: Any) -> int:
    """Return the floating-point (or integer) operations of one forward on ``example_inputs``.

    A multiply-add counts as 2 operations, as ``torch.utils.flop_counter`` counts them; integer kernels
    that slimtorch uses register their own formulas there, so quantized layers are counted too.
    """
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        call(model, example_inputs)
    return int(counter.get_total_flops())
