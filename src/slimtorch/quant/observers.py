"""Calibration observers: each sees activation batches and proposes a ``(min, max)`` range to quantize.

Memory is bounded: min-max observers keep two numbers; the others keep a fixed-size histogram that is
re-binned when a batch falls outside its range, never the activations themselves.

- ``minmax``: the extreme values seen.
- ``moving_average``: an exponential moving average of each batch's min and max (momentum 0.01).
- ``percentile``: the ``percentile`` and ``100 - percentile`` points of the histogram.
- ``mse``: the clipping range, searched over shrinking candidates, that minimizes the expected squared
  quantization error of the histogram.
- ``entropy``: the threshold minimizing the KL divergence between the clipped distribution and its
  quantized version (the TensorRT calibration method), on the absolute values.
"""

from __future__ import annotations

import torch

from slimtorch.quant.qparams import qrange

BINS = 2048


class MinMaxObserver:
    """Tracks the smallest and largest value seen."""

    def __init__(self) -> None:
        self.min = float("inf")
        self.max = float("-inf")

    def observe(self, x: torch.Tensor) -> None:
        """Update with one batch."""
        x = x.detach()
        self.min = min(self.min, float(x.min()))
        self.max = max(self.max, float(x.max()))

    def range(self, bits: int = 8, signed: bool = False) -> tuple[float, float]:
        """The proposed ``(min, max)``."""
        return self.min, self.max


class MovingAverageMinMaxObserver(MinMaxObserver):
    """Exponential moving average of per-batch min and max: ``m <- m + momentum * (batch - m)``."""

    def __init__(self, momentum: float = 0.01) -> None:
        super().__init__()
        self.momentum = momentum

    def observe(self, x: torch.Tensor) -> None:
        """Update with one batch (the first batch sets the range)."""
        lo, hi = float(x.detach().min()), float(x.detach().max())
        if self.min == float("inf"):
            self.min, self.max = lo, hi
            return
        self.min += self.momentum * (lo - self.min)
        self.max += self.momentum * (hi - self.max)


class HistogramObserver:
    """A histogram of every value seen over a range that grows as needed (``BINS`` bins)."""

    def __init__(self, bins: int = BINS) -> None:
        self.bins = bins
        self.hist = torch.zeros(bins, dtype=torch.float64)
        self.lo = 0.0
        self.hi = 0.0

    def observe(self, x: torch.Tensor) -> None:
        """Add one batch, widening (and re-binning) the histogram when the batch falls outside it."""
        x = x.detach().float().reshape(-1)
        lo, hi = min(self.lo, float(x.min())), max(self.hi, float(x.max()))
        if hi <= lo:
            hi = lo + 1e-8
        if (lo, hi) != (self.lo, self.hi):
            self._rebin(lo, hi)
        self.hist += torch.histc(x, self.bins, self.lo, self.hi).double()

    def _rebin(self, lo: float, hi: float) -> None:
        if self.hist.sum() > 0:
            width = (self.hi - self.lo) / self.bins
            centers = self.lo + (torch.arange(self.bins, dtype=torch.float64) + 0.5) * width
            index = ((centers - lo) / (hi - lo) * self.bins).long().clamp(0, self.bins - 1)
            new = torch.zeros(self.bins, dtype=torch.float64)
            new.index_add_(0, index, self.hist)
            self.hist = new
        self.lo, self.hi = lo, hi

    def centers(self) -> torch.Tensor:
        """Bin centers (float64)."""
        width = (self.hi - self.lo) / self.bins
        return self.lo + (torch.arange(self.bins, dtype=torch.float64) + 0.5) * width

    def quantile(self, q: float) -> float:
        """The value below which a fraction ``q`` (0-1) of the observed values lie."""
        cdf = torch.cumsum(self.hist, 0) / self.hist.sum()
        index = int(torch.searchsorted(cdf, torch.tensor([q], dtype=torch.float64)).clamp(max=self.bins - 1))
        width = (self.hi - self.lo) / self.bins
        return self.lo + (index + 1) * width


class PercentileObserver(HistogramObserver):
    """Clips at the ``percentile`` (e.g. 99.99) and ``100 - percentile`` points."""

    def __init__(self, percentile: float = 99.99, bins: int = BINS) -> None:
        super().__init__(bins)
        self.percentile = percentile

    def range(self, bits: int = 8, signed: bool = False) -> tuple[float, float]:
        """The proposed ``(min, max)``: the two percentile points (the min only when values go below 0)."""
        p = self.percentile / 100.0
        lo = self.quantile(1.0 - p) if self.lo < 0 else self.lo
        return min(lo, 0.0), self.quantile(p)


def expected_error(centers: torch.Tensor, counts: torch.Tensor, lo: float, hi: float, bits: int,
                   signed: bool) -> float:
    """Mean squared error of quantizing values at ``centers`` (weighted by ``counts``) with range [lo, hi]."""
    qmin, qmax = qrange(bits, signed)
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = max((hi - lo) / (qmax - qmin), 1e-12)
    zero = qmin - round(lo / scale)
    q = torch.clamp(torch.round(centers / scale) + zero, qmin, qmax)
    err = (q - zero) * scale - centers
    return float((err * err * counts).sum() / counts.sum())


class MSEObserver(HistogramObserver):
    """Searches clipping ranges ``[a * lo, a * hi]`` for a in (0, 1] that minimize the expected error."""

    def range(self, bits: int = 8, signed: bool = False) -> tuple[float, float]:
        """The proposed ``(min, max)`` with the least expected squared quantization error."""
        centers = self.centers()
        best, best_range = float("inf"), (self.lo, self.hi)
        for a in torch.linspace(0.05, 1.0, 96).tolist():
            candidate = (self.lo * a, self.hi * a)
            err = expected_error(centers, self.hist, *candidate, bits, signed)
            if err < best:
                best, best_range = err, candidate
        return best_range


def kl_threshold(hist: torch.Tensor, levels: int) -> int:
    """Number of leading bins of a histogram of absolute values to keep so that the KL divergence between
    the clipped distribution (outliers folded into the last kept bin) and its ``levels``-level quantized
    version is smallest (TensorRT's entropy calibration)."""
    hist = hist.double()
    best_kl, best_i = float("inf"), len(hist)
    for i in range(levels, len(hist) + 1, max(1, len(hist) // 256)):
        p = hist[:i].clone()
        p[-1] += hist[i:].sum()
        # merge the i kept bins into `levels` chunks, then spread each chunk's mass over its nonzero bins
        kept = hist[:i]
        chunk = torch.div(torch.arange(i) * levels, i, rounding_mode="floor")
        mass = torch.zeros(levels, dtype=torch.float64).index_add_(0, chunk, kept)
        nonzero = torch.zeros(levels, dtype=torch.float64).index_add_(0, chunk, (kept > 0).double())
        q = torch.where(kept > 0, mass[chunk] / nonzero[chunk].clamp(min=1), torch.zeros_like(kept))
        p_sum, q_sum = p.sum(), q.sum()
        if p_sum == 0 or q_sum == 0:
            continue
        p, q = p / p_sum, q / q_sum
        mask = p > 0
        kl = float((p[mask] * torch.log(p[mask] / torch.clamp(q[mask], min=1e-12))).sum())
        if kl < best_kl:
            best_kl, best_i = kl, i
    return best_i


class EntropyObserver(HistogramObserver):
    """Keeps a histogram of |x| and picks the threshold of least KL divergence (TensorRT calibration)."""

    def __init__(self, bins: int = BINS) -> None:
        super().__init__(bins)
        self.negative = False

    def observe(self, x: torch.Tensor) -> None:
        """Add one batch; remembers whether any value was negative."""
        self.negative = self.negative or bool((x < 0).any())
        super().observe(x.detach().abs())

    def range(self, bits: int = 8, signed: bool = False) -> tuple[float, float]:
        """``(-t, t)`` when negatives were seen, else ``(0, t)``, for the threshold ``t``."""
        levels = min(2 ** (bits - 1) if self.negative else 2**bits, self.bins)
        # the first bin holds every exact zero a ReLU produced: that spike would dominate the divergence and pull
        # the threshold far down, though zero is exact whatever the threshold; it counts as its neighbour does
        hist = self.hist.clone()
        if len(hist) > 1:
            hist[0] = hist[1]
        t = self.lo + kl_threshold(hist, levels) * (self.hi - self.lo) / self.bins
        return (-t, t) if self.negative else (0.0, t)


OBSERVERS = {
    "minmax": MinMaxObserver,
    "moving_average": MovingAverageMinMaxObserver,
    "percentile": PercentileObserver,
    "mse": MSEObserver,
    "entropy": EntropyObserver,
}


def make_observer(name: str, percentile: float = 99.99) -> MinMaxObserver | HistogramObserver:
    """A fresh observer by name (see ``OBSERVERS``)."""
    if name == "percentile":
        return PercentileObserver(percentile)
    return OBSERVERS[name]()
