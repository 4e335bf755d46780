"""Report plots (matplotlib, headless): the accuracy-versus-size path of a run and per-layer charts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter  # noqa: E402


def _save(fig: Any, path: Path) -> Path:
    from slimtorch.io.atomic import publish, temporary_sibling

    tmp = temporary_sibling(path)
    fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return publish(tmp, path)


def tradeoff_figure(points: list[dict[str, Any]]) -> Any:
    """Accuracy (points, 0-100) and latency against saved size (MiB, log scale), one marker per step.

    Steps are told apart by a numbered legend outside the axes, not by text beside the markers, so labels of
    points that land close together (a fine-tune that keeps the size of the prune before it) never overlap.

    Args:
        points: ``{"label", "size_bytes", "accuracy", "latency_ms"}`` per step (accuracy may be None).

    Returns:
        The matplotlib figure (not yet saved).
    """
    fig, (ax_acc, ax_lat) = plt.subplots(1, 2, figsize=(11, 4))
    sizes = [p["size_bytes"] / 2**20 for p in points]
    markers = "osD^v<>pPX*h"
    for ax, key, ylabel, scale in ((ax_acc, "accuracy", "accuracy (%)", 100.0),
                                   (ax_lat, "latency_ms", "median latency (ms)", 1.0)):
        values = [None if p.get(key) is None else p[key] * scale for p in points]
        xs = [s for s, v in zip(sizes, values, strict=True) if v is not None]
        ys = [v for v in values if v is not None]
        ax.plot(xs, ys, "-", color="#999999", zorder=1)
        for i, (p, s, v) in enumerate(zip(points, sizes, values, strict=True)):
            if v is not None:
                ax.plot([s], [v], markers[i % len(markers)], color=f"C{i % 10}", markersize=8, label=p["label"],
                        zorder=2)
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))  # plain 0.2, 0.5, 1 labels, few enough
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("saved size (MiB, log scale)")
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
    ax_acc.set_title("accuracy vs size, step by step")
    ax_lat.set_title("latency vs size, step by step")
    handles = {h.get_label(): h for ax in (ax_acc, ax_lat) for h in ax.get_lines()[1:]}
    fig.legend(list(handles.values()), list(handles), loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=9,
               title="step")
    fig.tight_layout()
    return fig


def plot_tradeoff(points: list[dict[str, Any]], path: str | Path) -> Path:
    """Write :func:`tradeoff_figure` as a PNG.

    Args:
        points: ``{"label", "size_bytes", "accuracy", "latency_ms"}`` per step (accuracy may be None).
        path: the PNG to write.

    Returns:
        The path written.
    """
    return _save(tradeoff_figure(points), Path(path))


def layers_figure(before: list[dict[str, Any]], after: list[dict[str, Any]]) -> Any:
    """Per-layer horizontal bars: weights before and after, sparsity (%), bits (and rank when any layer has one).

    Every bar row carries its layer name on the shared y axis, top to bottom in model order.

    Args:
        before: ``measure.layers.layer_table`` of the original model.
        after: the same for the compressed model.

    Returns:
        The matplotlib figure (not yet saved).
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
    fig, axes = plt.subplots(1, panels, figsize=(3.2 * panels + 2, max(3.0, 0.32 * len(names) + 1.2)),
                             sharey=True)
    ys = list(range(len(names)))
    before_params = {row["name"]: row["params"] for row in before}
    axes[0].barh([y - 0.2 for y in ys], [before_params.get(n, 0) for n in names], height=0.4, label="before")
    axes[0].barh([y + 0.2 for y in ys], [after_value(n, "nonzero") or after_value(n, "params") for n in names],
                 height=0.4, label="after (non-zero)")
    axes[0].set_xlabel("weights (log scale)")
    axes[0].set_xscale("log")
    axes[0].legend(fontsize=8)
    axes[1].barh(ys, [100 * after_value(n, "sparsity") for n in names], color="#d62728")
    axes[1].set_xlabel("sparsity (%)")
    axes[1].set_xlim(0, 100)
    axes[2].barh(ys, [after_value(n, "bits", 32) for n in names], color="#2ca02c")
    axes[2].set_xlabel("bits per weight")
    if has_rank:
        axes[3].barh(ys, [after_value(n, "rank") for n in names], color="#9467bd")
        axes[3].set_xlabel("rank")
    axes[0].set_yticks(ys)
    axes[0].set_yticklabels(names, fontsize=8)
    axes[0].invert_yaxis()
    for ax in axes:
        ax.grid(True, axis="x", alpha=0.3)
    fig.suptitle("per-layer effect of compression")
    fig.tight_layout()
    return fig


def plot_layers(before: list[dict[str, Any]], after: list[dict[str, Any]], path: str | Path) -> Path:
    """Write :func:`layers_figure` as a PNG.

    Args:
        before: ``measure.layers.layer_table`` of the original model.
        after: the same for the compressed model.
        path: the PNG to write.

    Returns:
        The path written.
    """
    return _save(layers_figure(before, after), Path(path))
