import json

import torch
from torch import nn

import slimtorch as st
from slimtorch.pipeline import run_recipe
from slimtorch.recipe import Recipe
from slimtorch.report import write_report


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
