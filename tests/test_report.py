import json
import re

import torch
from matplotlib.text import Text
from torch import nn

import slimtorch as st
from slimtorch.measure.plots import layers_figure, tradeoff_figure
from slimtorch.pipeline import run_recipe
from slimtorch.recipe import Recipe
from slimtorch.report import PLOT_CAPTIONS, write_report


def test_report_files_hold_before_after_and_stages(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
    batches = [(torch.randn(16, 8), torch.randint(0, 2, (16,))) for _ in range(3)]
    record = run_recipe(model, Recipe(stages=(st.Finetune(epochs=1),)), data=batches, eval_fn=lambda m: 0.5)
    files = write_report(record, tmp_path, artifacts={"safetensors": "model.safetensors"})
    report = json.loads(files["json"].read_text())
    assert report["before"]["params"] == 8 * 16 + 16 + 16 * 2 + 2
    assert len(report["stages"]) == 1 and report["stages"][0]["stage"] == "finetune"
    assert report["ratios"]["size_x"] > 0
    md = files["md"].read_text()
    assert "| saved size |" in md and "| finetune |" in md and "tradeoff.png" in md
    html = files["html"].read_text()
    assert html.count("data:image/png;base64,") == 2 and "<table>" in html
    for plot in ("tradeoff", "layers"):
        assert files[plot].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _layer_rows(n, sparsity):
    return [{"name": f"features.{i}.conv", "type": "Conv2d", "params": 1000 + i, "nonzero": int(1000 * (1 - sparsity)),
             "sparsity": sparsity, "bits": 8, "rank": None} for i in range(n)]


def test_layers_plot_names_every_bar_and_shows_sparsity_in_percent():
    before, after = _layer_rows(20, 0.0), _layer_rows(20, 0.5)
    fig = layers_figure(before, after)
    weights, sparsity, bits = fig.axes[:3]
    assert [t.get_text() for t in weights.get_yticklabels()] == [r["name"] for r in before]
    assert sparsity.get_xlabel() == "sparsity (%)" and sparsity.get_xlim() == (0, 100)
    assert [round(bar.get_width(), 6) for bar in sparsity.patches] == [50.0] * 20
    assert [bar.get_width() for bar in bits.patches] == [8] * 20
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    boxes = [t.get_window_extent(renderer) for t in weights.get_yticklabels()]
    assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:])


def test_tradeoff_plot_labels_never_overlap_even_for_coincident_points():
    points = [{"label": "original", "size_bytes": 4 << 20, "accuracy": 0.95, "latency_ms": 2.0},
              {"label": "1:prune", "size_bytes": 2 << 20, "accuracy": 0.90, "latency_ms": 1.0},
              {"label": "2:finetune", "size_bytes": 2 << 20, "accuracy": 0.905, "latency_ms": 1.0}]
    fig = tradeoff_figure(points)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    labels = [t for t in fig.findobj(Text) if t.get_text() in {"original", "1:prune", "2:finetune"}]
    assert sorted(t.get_text() for t in labels) == ["1:prune", "2:finetune", "original"]
    boxes = [t.get_window_extent(renderer) for t in labels]
    assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:])
    for ax in fig.axes:  # size tick labels are plain numbers that do not run into each other either
        ticks = [t for t in ax.get_xticklabels(minor=True) + ax.get_xticklabels() if t.get_text() and
                 ax.get_xlim()[0] <= t.get_position()[0] <= ax.get_xlim()[1]]
        assert ticks and all("^" not in t.get_text() for t in ticks)
        boxes = [t.get_window_extent(renderer) for t in ticks]
        assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:])
    assert fig.axes[0].get_ylabel() == "accuracy (%)"
    assert [round(line.get_ydata()[0], 3) for line in fig.axes[0].get_lines()[1:]] == [95.0, 90.0, 90.5]


def test_html_captions_describe_the_plots_without_stray_words(tmp_path):
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
    batches = [(torch.randn(16, 8), torch.randint(0, 2, (16,)))]
    record = run_recipe(model, Recipe(stages=(st.Finetune(epochs=1),)), data=batches, eval_fn=lambda m: 0.5)
    page = write_report(record, tmp_path)["html"].read_text()
    captions = re.findall(r"<figcaption>(.*?)</figcaption>", page)
    assert captions == [PLOT_CAPTIONS["tradeoff"], PLOT_CAPTIONS["layers"]]
    text = re.sub(r"<[^>]+>", " ", re.sub(r'src="data:[^"]*"', "", page))
    assert "tradeoff" not in text and "layers" not in text.split()
