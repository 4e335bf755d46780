"""Report plots (matplotlib, headless): the accuracy-versus-size path of a run and per-layer charts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def _save(fig: Any, path: Path) -> Path:
    from slimtorch.io.atomic import publish, temporary_sibling

    tmp = temporary_sibling(path)
    fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return publish(tmp, path)


def plot_tradeoff(points: list[dict[str, Any]], path: str | Path) -> Path:
    """Accuracy (points, 0-100) against saved size (MiB, log scale), one marker per stage, joined in order.

    Args:
        points: ``{"label", "size_bytes", "accuracy", "latency_ms"}`` per step (accuracy may be None).
        path: the PNG to write.

    Returns:
        The path written.
    """
    fig, (ax_acc, ax_lat) = plt.subplots(1, 2, figsize=(10, 4))
    sizes = [p["size_bytes"] / 2**20 for p in points]
    for ax, key, ylabel, scale in ((ax_acc, "accuracy", "accuracy (%)", 100.0),
                                   (ax_lat, "latency_ms", "median latency (ms)", 1.0)):
        values = [None if p.get(key) is None else p[key] * scale for p in points]
        xs = [s for s, v in zip(sizes, values, strict=True) if v is not None]
        ys = [v for v in values if v is not None]
        ax.plot(xs, ys, "-o", color="#1f77b4")
        for p, s, v in zip(points, sizes, values, strict=True):
            if v is not None:
                ax.annotate(p["label"], (s, v), textcoords="offset points", xytext=(4, 6), fontsize=8)
        ax.set_xscale("log")
        ax.set_xlabel("saved size (MiB, log scale)")
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
    ax_acc.set_title("accuracy vs size, stage by stage")
    ax_lat.set_title("latency vs size, stage by stage")
    return _save(fig, Path(path))


def plot_layers(before: list[dict[str, Any]], after: list[dict[str, Any]], path: str | Path) -> Path:
    """Per-layer bars: parameters before and after, sparsity, and bits (and rank when any layer has one).

    Args:
        before: ``measure.layers.layer_table`` of the original model.
        after: the same for the compressed model.
        path: the PNG to write.

    Returns:
        The path written.
    """
    names = [row["name"] for row in before]
    after_by_name = {row["name"]: row for row in after}
    for row in after:  # layers that exist only after (decomposed factors) are listed too
        if row["name"] not in names and not any(row["name"].startswith(n + ".") for n in names):
            names.append(row["name"])

    def after_value(name: str, key: str, default: float = 0.0) -> float:
        if name in after_by_name:
            value = after_by_name[name].get(key)
            return default if value is None else value
        parts = [r for n, r in after_by_name.items() if n.startswith(name + ".")]
        if key == "params":
            return sum(r["params"] for r in parts)
        return default

    has_rank = any(row.get("rank") for row in after)
    panels = 4 if has_rank else 3
    fig, axes = plt.subplots(panels, 1, figsize=(max(8, 0.45 * len(names)), 2.6 * panels), sharex=True)
    xs = range(len(names))
    before_params = {row["name"]: row["params"] for row in before}
    axes[0].bar([x - 0.2 for x in xs], [before_params.get(n, 0) for n in names], width=0.4, label="before")
    axes[0].bar([x + 0.2 for x in xs], [after_value(n, "nonzero") or after_value(n, "params") for n in names],
                width=0.4, label="after (non-zero)")
    axes[0].set_ylabel("weights")
    axes[0].set_yscale("log")
    axes[0].legend(fontsize=8)
    axes[1].bar(xs, [100 * after_value(n, "sparsity") for n in names], color="#d62728")
    axes[1].set_ylabel("sparsity (%)")
    axes[2].bar(xs, [after_value(n, "bits", 32) for n in names], color="#2ca02c")
    axes[2].set_ylabel("bits per weight")
    if has_rank:
        axes[3].bar(xs, [after_value(n, "rank") for n in names], color="#9467bd")
        axes[3].set_ylabel("rank")
    axes[-1].set_xticks(list(xs))
    axes[-1].set_xticklabels(names, rotation=60, ha="right", fontsize=8)
    for ax in axes:
        ax.grid(True, axis="y", alpha=0.3)
    axes[0].set_title("per-layer effect of compression")
    return _save(fig, Path(path))
