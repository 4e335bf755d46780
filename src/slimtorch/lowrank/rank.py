"""Rank selection as pure functions: fixed ratios, spectral energy, break-even bounds and budget allocation.

Costs are counted in weights (parameters) or multiply-adds; errors are whatever the caller measured (the
relative output error of the model on calibration data, for ``LowRank(target=...)``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass

import torch

#: fractions of a layer's full rank tried when a budget is spread over layers
RATIO_GRID = tuple(i / 32 for i in range(1, 16)) + tuple(i / 16 for i in range(8, 15))


def energy_rank(singular_values: torch.Tensor, energy: float) -> int:
    """Smallest rank ``r`` whose leading singular values keep ``energy`` of the total squared spectrum.

    Args:
        singular_values: 1-D, in descending order.
        energy: fraction 0-1 of ``sum(s**2)`` to keep.

    Returns:
        A rank between 1 and ``len(singular_values)``.

    Example:
        >>> energy_rank(torch.tensor([3.0, 1.0, 0.0]), 0.9)
        1
    """
    s2 = singular_values.double().pow(2)
    total = float(s2.sum())
    if total == 0.0:
        return 1
    kept = torch.cumsum(s2, 0) / total
    # a tolerance so that energy=1.0 is met despite rounding in the cumulative sum
    return int(torch.searchsorted(kept, torch.tensor(energy - 1e-12, dtype=kept.dtype)).item()) + 1


def ratio_rank(full_rank: int, ratio: float) -> int:
    """``ceil(ratio * full_rank)``, at least 1 and at most ``full_rank``."""
    return max(1, min(full_rank, math.ceil(ratio * full_rank - 1e-9)))


def svd_break_even(out_features: int, in_features: int) -> float:
    """The rank at which two factors cost as much as the dense matrix: ``mn / (m + n)``.

    A factorization pays off only for ranks strictly below it.
    """
    return out_features * in_features / (out_features + in_features)


@dataclass(frozen=True)
class Option:
    """One way to treat a layer: a rank (None: keep it dense), its cost and its measured error."""

    rank: Hashable
    cost: float
    error: float


def allocate(options: dict[str, Sequence[Option]], dense: dict[str, float], budget: float) -> dict[str, Option | None]:
    """Pick one option per layer so the total cost fits ``budget`` with the least summed error.

    Greedy from all-dense: at each step take, over every layer and every cheaper option of it, the move with
    the smallest added error per unit of cost saved, until the total fits; then spend the slack left by the
    last step on the moves back up that remove the most error per unit of cost. Errors are assumed to add
    up across layers (they are measured one layer at a time).

    Args:
        options: layer -> its low-rank options (any order).
        dense: layer -> cost when left dense (error 0).
        budget: the largest total cost allowed, in the same unit as the costs.

    Returns:
        Layer -> the chosen option, or None for a layer left dense.

    Raises:
        ValueError: even the cheapest option of every layer exceeds ``budget`` (message gives the minimum).
    """
    chosen: dict[str, Option | None] = {name: None for name in dense}

    def cost_of(name: str) -> float:
        pick = chosen[name]
        return dense[name] if pick is None else pick.cost

    def error_of(name: str) -> float:
        pick = chosen[name]
        return 0.0 if pick is None else pick.error

    total = sum(cost_of(n) for n in dense)
    while total > budget:
        best: tuple[float, str, Option] | None = None
        for name, opts in options.items():
            for opt in opts:
                saved = cost_of(name) - opt.cost
                if saved <= 0:
                    continue
                score = (opt.error - error_of(name)) / saved
                if best is None or score < best[0]:
                    best = (score, name, opt)
        if best is None:
            raise ValueError(f"the cheapest factorization of every layer costs {total:.0f}, above {budget:.0f}")
        _, name, opt = best
        total -= cost_of(name) - opt.cost
        chosen[name] = opt
    # spend what the last big step left over: raise ranks where that lowers the error most per unit of cost
    while True:
        best = None
        for name, opts in options.items():
            for opt in [*opts, None]:
                extra = (dense[name] if opt is None else opt.cost) - cost_of(name)
                gain = error_of(name) - (0.0 if opt is None else opt.error)
                if 0 < extra <= budget - total and gain > 0 and (best is None or gain / extra > best[0]):
                    best = (gain / extra, name, opt)
        if best is None:
            return chosen
        _, name, opt = best
        total += (dense[name] if opt is None else opt.cost) - cost_of(name)
        chosen[name] = opt


def bisect_level(cost_at: Callable[[float], float], budget: float, lo: float, hi: float, steps: int = 40) -> float:
    """The largest level in ``[lo, hi]`` whose cost fits ``budget``, for a cost that grows with the level.

    Used to find one energy fraction or one rank ratio, shared by all layers, that meets a budget.

    Raises:
        ValueError: even ``cost_at(lo)`` exceeds the budget.
    """
    if cost_at(lo) > budget:
        raise ValueError(f"even the lowest level costs {cost_at(lo):.0f}, above {budget:.0f}")
    for _ in range(steps):
        mid = (lo + hi) / 2
        if cost_at(mid) <= budget:
            lo = mid
        else:
            hi = mid
    return lo
