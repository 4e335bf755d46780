"""``slimtorch.compare``: the before/after table, as ratios, for the terminal, markdown and JSON."""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

from rich.console import Console
from rich.table import Table

from slimtorch.measure.metrics import Metrics


def human_bytes(n: float) -> str:
    """``1536`` -> ``"1.5 KiB"``."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        shown = f"{n:.0f}" if unit == "B" else f"{n:.1f}"
        if abs(float(shown)) < 1024 or unit == "GiB":  # decided after rounding: 1048575 B is "1.0 MiB"
            return f"{shown} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def human_count(n: float) -> str:
    """``2_500_000`` -> ``"2.50M"``."""
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        # a value that rounds up to 1.00 of a unit is shown in it: 999_999 is "1.00M", not "1000.00k"
        if abs(n) >= div or (unit != "k" and round(abs(n) / div, 2) >= 1.0):
            return f"{n / div:.2f}{unit}"
    return f"{n:.0f}"


def _ratio(before: float, after: float) -> float | None:
    return before / after if after else None


@dataclass
class Comparison:
    """Before and after metrics with their ratios (``x`` = before / after, so higher is better)."""

    before: Metrics
    after: Metrics

    @property
    def ratios(self) -> dict[str, float | None]:
        """``size_x``, ``params_x``, ``flops_x``, ``speedup_x``, ``memory_x`` (before/after) and
        ``accuracy_change`` (after - before, in the metric's units; None without accuracy)."""
        b, a = self.before, self.after
        change = None
        if b.accuracy is not None and a.accuracy is not None:
            change = a.accuracy - b.accuracy
        return {
            "size_x": _ratio(b.size_bytes, a.size_bytes),
            "params_x": _ratio(b.nonzero_params, a.nonzero_params),
            "flops_x": _ratio(b.flops, a.flops),
            "speedup_x": _ratio(b.latency_ms, a.latency_ms),
            "memory_x": _ratio(b.peak_memory_bytes, a.peak_memory_bytes),
            "accuracy_change": change,
        }

    def rows(self) -> list[tuple[str, str, str, str]]:
        """Table rows ``(metric, before, after, change)`` as display strings."""
        b, a, r = self.before, self.after, self.ratios

        def x(v: float | None) -> str:
            return "-" if v is None else f"{v:.2f}x"

        rows = [
            ("saved size", human_bytes(b.size_bytes), human_bytes(a.size_bytes), x(r["size_x"]) + " smaller"),
            ("parameters (non-zero)", human_count(b.nonzero_params), human_count(a.nonzero_params),
             x(r["params_x"]) + " fewer"),
            ("FLOPs", human_count(b.flops), human_count(a.flops), x(r["flops_x"]) + " fewer"),
            (f"latency median (batch {a.batch_size}, {a.threads} threads)", f"{b.latency_ms:.3f} ms",
             f"{a.latency_ms:.3f} ms", x(r["speedup_x"]) + " faster"),
            ("latency p90", f"{b.latency_p90_ms:.3f} ms", f"{a.latency_p90_ms:.3f} ms",
             x(_ratio(b.latency_p90_ms, a.latency_p90_ms)) + " faster"),
            ("peak memory", human_bytes(b.peak_memory_bytes), human_bytes(a.peak_memory_bytes),
             x(r["memory_x"]) + " less"),
        ]
        if r["accuracy_change"] is not None:
            rows.append(("accuracy", f"{b.accuracy:.4f}", f"{a.accuracy:.4f}",
                         f"{100 * r['accuracy_change']:+.2f} points"))
        return rows

    def to_dict(self) -> dict[str, Any]:
        """``{"before": ..., "after": ..., "ratios": ...}`` as plain JSON values."""
        return {"before": self.before.to_dict(), "after": self.after.to_dict(), "ratios": self.ratios}

    def to_markdown(self) -> str:
        """The table as GitHub markdown."""
        lines = ["| metric | before | after | change |", "|---|---|---|---|"]
        lines += [f"| {m} | {b} | {a} | {c} |" for m, b, a, c in self.rows()]
        return "\n".join(lines) + "\n"

    def __rich__(self) -> Table:
        table = Table(title="slimtorch: before -> after")
        for col, justify in (("metric", "left"), ("before", "right"), ("after", "right"), ("change", "right")):
            table.add_column(col, justify=justify)
        for row in self.rows():
            table.add_row(*row)
        return table

    def __str__(self) -> str:
        buffer = io.StringIO()
        Console(file=buffer, width=100, color_system=None).print(self)
        return buffer.getvalue()


def compare(before: Metrics, after: Metrics) -> Comparison:
    """Compare two ``Metrics`` records: ratios of size, parameters, FLOPs, latency, memory and accuracy change.

    Example:
        >>> import slimtorch as st, torch
        >>> a = st.measure(torch.nn.Linear(64, 64), torch.randn(1, 64))
        >>> st.compare(a, a).ratios["size_x"]
        1.0
    """
    return Comparison(before, after)
