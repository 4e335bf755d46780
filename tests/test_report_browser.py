"""The HTML report opens in a real browser: headless Chromium renders it to a screenshot.

Skipped where Chromium is not installed (`apt-get install chromium`); docs/recipes.md documents the same
check by hand.
"""

import shutil
import subprocess

import pytest
import torch
from torch import nn

import slimtorch as st
from slimtorch.pipeline import run_recipe
from slimtorch.recipe import Recipe
from slimtorch.report import write_report

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed")
def test_html_report_renders_with_its_plots(tmp_path):
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
    batches = [(torch.randn(16, 8), torch.randint(0, 2, (16,)))]
    record = run_recipe(model, Recipe(stages=(st.Finetune(epochs=1),)), data=batches, eval_fn=lambda m: 0.5)
    files = write_report(record, tmp_path / "out")
    shot = tmp_path / "shot.png"
    subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1200,1600", f"--screenshot={shot}",
         files["html"].as_uri()],
        check=True, capture_output=True, timeout=120,
    )
    from PIL import Image

    image = Image.open(shot).convert("RGB")
    assert image.size == (1200, 1600)
    # the embedded plots draw coloured lines and bars: a blank or broken page would be nearly all white/grey
    colours = image.resize((300, 400)).getcolors(maxcolors=1 << 16)
    coloured = sum(n for n, (r, g, b) in colours if max(r, g, b) - min(r, g, b) > 60)
    assert coloured > 200
