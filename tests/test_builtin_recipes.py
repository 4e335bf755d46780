"""Every bundled recipe validates and runs end to end on a tiny model with tiny data."""

import pytest
import torch
from torch import nn

import slimtorch as st
from slimtorch.recipe import builtin_names


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Linear(32, 64)
        self.act = nn.ReLU()
        self.head = nn.Linear(64, 4)

    def forward(self, x):
        return self.head(self.act(self.fc1(self.pool(self.features(x)).flatten(1))))


@pytest.mark.parametrize("name", builtin_names())
def test_builtin_recipe_runs_on_a_tiny_model(name, tmp_path):
    torch.manual_seed(0)
    model = Tiny().eval()
    x = torch.randn(64, 1, 8, 8)
    y = torch.randint(0, 4, (64,))
    batches = [(x[i : i + 16], y[i : i + 16]) for i in range(0, 64, 16)]
    recipe = st.load_recipe(f"builtin:{name}")
    st.compress(model, recipe, data=batches, example_inputs=x[:4], out_dir=tmp_path)
    record = model.slimtorch_record
    assert len(record.stages) == len(recipe.stages)
    assert model(x[:4]).shape == (4, 4)
    assert record.after.size_bytes <= record.before.size_bytes
    restored = st.load(tmp_path / "checkpoints" / f"stage-{len(recipe.stages):02d}", model=Tiny())
    torch.testing.assert_close(restored(x[:4]), model(x[:4]), rtol=1e-4, atol=1e-4)
