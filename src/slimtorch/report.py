"""The run report: ``report.json``, ``report.md`` and a self-contained ``report.html`` with plots."""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any

from slimtorch.io.atomic import write_text
from slimtorch.measure.compare import compare, human_bytes
from slimtorch.measure.metrics import Metrics
from slimtorch.measure.plots import plot_layers, plot_tradeoff
from slimtorch.record import RunRecord


def _stage_rows(record: RunRecord) -> list[list[str]]:
    """One row per step: what it did and its measured size, latency and accuracy (with the change)."""
    rows = []
    prev = record.before.to_dict()

    def fmt(m: dict[str, Any], p: dict[str, Any]) -> list[str]:
        acc = "-" if m.get("accuracy") is None else f"{100 * m['accuracy']:.2f}%"
        dacc = "" if m.get("accuracy") is None or p.get("accuracy") is None else \
            f" ({100 * (m['accuracy'] - p['accuracy']):+.2f})"
        return [human_bytes(m["size_bytes"]), f"{p['size_bytes'] / m['size_bytes']:.2f}x",
                f"{m['latency_ms']:.3f} ms", f"{p['latency_ms'] / m['latency_ms']:.2f}x", acc + dacc]

    rows.append(["0", "original", "-", "-"] + fmt(prev, prev))
    for s in record.stages:
        settings = ", ".join(f"{k}={v}" for k, v in s.config.items() if k != "method")
        name = s.stage if s.stage == s.method else f"{s.stage} ({s.method})"
        head = [str(s.index + 1), name, settings, f"{s.seconds:.1f} s"]
        if s.metrics is None:
            rows.append(head + ["-"] * 5)
            continue
        rows.append(head + fmt(s.metrics, prev))
        prev = s.metrics
    return rows


STAGE_COLUMNS = ["#", "stage", "settings", "time", "saved size", "x smaller (step)", "latency",
                 "x faster (step)", "accuracy (change, points)"]


def _points(record: RunRecord) -> list[dict[str, Any]]:
    points = [{**record.before.to_dict(), "label": "original"}]
    points += [{**s.metrics, "label": f"{s.index + 1}:{s.stage}"} for s in record.stages if s.metrics]
    return points


def write_report(record: RunRecord, out_dir: str | Path, *, title: str = "slimtorch report",
                 artifacts: dict[str, str] | None = None) -> dict[str, Path]:
    """Write ``report.json``, ``report.md``, ``report.html`` and the PNG plots into ``out_dir``.

    Returns:
        Name -> path of every file written.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    comparison = compare(record.before, record.after)
    tradeoff = plot_tradeoff(_points(record), out / "tradeoff.png")
    layers_after = record.stages[-1].layers if record.stages else record.layers_before
    layers = plot_layers(record.layers_before, layers_after, out / "layers.png")

    run = {k: v for k, v in record.to_dict().items() if k != "files"}  # the files are these, being written
    payload = {**run, "ratios": comparison.ratios, "artifacts": artifacts or {}}
    files = {"json": write_text(out / "report.json", json.dumps(payload, indent=2, default=str) + "\n")}

    stage_rows = _stage_rows(record)
    md = [f"# {title}", "", "## Before and after", "", comparison.to_markdown(), "## Stages", "",
          "| " + " | ".join(STAGE_COLUMNS) + " |", "|" + "---|" * len(STAGE_COLUMNS)]
    md += ["| " + " | ".join(row) + " |" for row in stage_rows]
    md += ["", "## Plots", "", f"![{PLOT_CAPTIONS['tradeoff']}](tradeoff.png)", "",
           f"![{PLOT_CAPTIONS['layers']}](layers.png)", ""]
    if artifacts:
        md += ["## Artifacts", ""] + [f"- {k}: `{v}`" for k, v in artifacts.items()] + [""]
    md += [_footnote(record.after)]
    files["md"] = write_text(out / "report.md", "\n".join(md) + "\n")
    files["html"] = write_text(out / "report.html", _html(title, comparison, stage_rows, [tradeoff, layers],
                                                          artifacts or {}, record.after))
    files["tradeoff"], files["layers"] = tradeoff, layers
    return files


def _footnote(m: Metrics) -> str:
    return (f"_Measured on {m.runtime}, batch {m.batch_size}, {m.threads} threads; latency is the median of "
            "per-call times after warm-up, the original, each stage and the result timed together in alternating "
            "blocks; "
            "size is the bytes of the saved safetensors artifact._")


PLOT_CAPTIONS = {"tradeoff": "Accuracy and latency against saved size, one marker per step.",
                 "layers": "Per-layer effect: weights before and after, sparsity, bits per weight."}


def _table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _html(title: str, comparison: Any, stage_rows: list[list[str]], plots: list[Path],
          artifacts: dict[str, str], after: Metrics) -> str:
    images = "".join(
        f'<figure><img alt="{html.escape(PLOT_CAPTIONS[p.stem])}" '
        f'src="data:image/png;base64,{base64.b64encode(p.read_bytes()).decode()}">'
        f"<figcaption>{html.escape(PLOT_CAPTIONS[p.stem])}</figcaption></figure>"
        for p in plots
    )
    arts = "".join(f"<li>{html.escape(k)}: <code>{html.escape(v)}</code></li>" for k, v in artifacts.items())
    style = ("body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222}"
             "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;"
             "text-align:right}td:first-child,th:first-child{text-align:left}th{background:#f3f3f3}"
             "img{max-width:100%;border:1px solid #eee}figure{margin:1em 0}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body><h1>{html.escape(title)}</h1>"
            f"<h2>Before and after</h2>{_table(['metric', 'before', 'after', 'change'], comparison.rows())}"
            f"<h2>Stages</h2>{_table(STAGE_COLUMNS, stage_rows)}<h2>Plots</h2>{images}"
            + (f"<h2>Artifacts</h2><ul>{arts}</ul>" if arts else "")
            + f"<p><em>{html.escape(_footnote(after).strip('_'))}</em></p></body></html>\n")
