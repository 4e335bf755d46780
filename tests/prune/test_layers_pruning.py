"""Layer pruning: blocks whose removal changes the output least go first; the model still runs and saves."""

import pytest
import torch
from torch import nn

import slimtorch as st
from slimtorch.prune.layers import Skip, block_similarity, find_blocks, output_change


class Residual(nn.Module):
    def __init__(self, d: int, scale: float) -> None:
        super().__init__()
        self.fc = nn.Linear(d, d)
        self.scale = scale

    def forward(self, x):
        return x + self.scale * torch.tanh(self.fc(x))


class Stack(nn.Module):
    def __init__(self, scales=(1.0, 0.001, 0.5, 0.01)) -> None:
        super().__init__()
        self.inp = nn.Linear(8, 16)
        self.layers = nn.ModuleList(Residual(16, s) for s in scales)
        self.out = nn.Linear(16, 3)

    def forward(self, x):
        x = self.inp(x)
        for layer in self.layers:
            x = layer(x)
        return self.out(x)


def test_similarity_and_output_change_are_exact_on_known_inputs():
    x = torch.randn(4, 10)
    assert block_similarity(x, x) == pytest.approx(1.0, abs=1e-6)
    assert block_similarity(x, -x) == pytest.approx(-1.0, abs=1e-6)
    assert output_change(x, x) == 0.0
    assert output_change(x, 2 * x) == pytest.approx(1.0, rel=1e-6)


def test_candidates_are_the_shape_keeping_members_of_a_module_list():
    assert sorted(find_blocks(Stack(), torch.randn(2, 8))) == [f"layers.{i}" for i in range(4)]


@pytest.mark.parametrize("metric", ["cosine", "output"])
def test_removes_the_blocks_that_change_least(metric, tmp_path):
    torch.manual_seed(0)
    model, x = Stack().eval(), torch.randn(32, 8)
    st.prune(model, st.LayerPruning(num_layers=2, metric=metric), data=[x], example_inputs=x[:1])
    assert isinstance(model.layers[1], Skip) and isinstance(model.layers[3], Skip)
    assert not isinstance(model.layers[0], Skip) and not isinstance(model.layers[2], Skip)
    out = model(x)
    loaded = st.load(st.save(model, tmp_path / "m"), Stack()).eval()
    torch.testing.assert_close(loaded(x), out)


def test_zoo_cnn_keeps_accuracy_after_removing_one_block(digits_cnn):
    import copy

    model, data = copy.deepcopy(digits_cnn[0]), digits_cnn[1]
    base = data.evaluate(model)
    st.prune(model, st.LayerPruning(num_layers=1), data=data.calibration, example_inputs=data.example_inputs(1))
    assert sum(isinstance(m, Skip) for m in model.modules()) == 1
    assert data.evaluate(model) >= base - 0.05


def test_errors_name_the_way_out():
    with pytest.raises(st.ConfigError, match="num_layers"):
        st.prune(Stack(), st.LayerPruning(num_layers=9), example_inputs=torch.randn(1, 8))
    with pytest.raises(st.ConfigError, match="candidates"):
        st.prune(Stack(), st.LayerPruning(candidates=("nothing*",)), example_inputs=torch.randn(1, 8))
    with pytest.raises(st.DataError):
        st.prune(Stack(), st.LayerPruning())
    with pytest.raises(st.ConfigError, match="num_layers"):
        st.LayerPruning(num_layers=0)


def test_model_without_removable_block_is_unsupported_and_untouched():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 10))  # VGG-like
    with pytest.raises(st.UnsupportedModelError, match="Sequential has no removable block.*candidates"):
        st.prune(model, st.LayerPruning(), example_inputs=torch.randn(1, 3, 8, 8))
    assert [type(m) for m in model] == [nn.Conv2d, nn.ReLU, nn.Flatten, nn.Linear]


def test_hugging_face_layer_count_stays_and_the_limit_is_said(caplog):
    transformers = pytest.importorskip("transformers")
    cfg = transformers.BertConfig(hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=64,
                                  vocab_size=100, max_position_embeddings=16)
    torch.manual_seed(0)
    model = transformers.BertModel(cfg).eval()
    ids = torch.randint(0, 100, (1, 8))
    with caplog.at_level("WARNING", logger="slimtorch"):
        st.prune(model, st.LayerPruning(num_layers=1), example_inputs={"input_ids": ids})
    assert sum(isinstance(layer, Skip) for layer in model.encoder.layer) == 1
    assert model.config.num_hidden_layers == len(model.encoder.layer) == 3  # the Skip is still counted and run
    assert "config.num_hidden_layers=3" in caplog.text and "st.load" in caplog.text
    assert model(ids).last_hidden_state.shape == (1, 8, 32)
