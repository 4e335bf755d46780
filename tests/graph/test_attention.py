"""SlimMultiheadAttention reproduces nn.MultiheadAttention exactly, masks and layouts included."""

import pytest
import torch
from torch import nn

import slimtorch as st
from slimtorch.graph.attention import SlimMultiheadAttention, convert_attention


@pytest.mark.parametrize("batch_first", [True, False])
def test_same_outputs_and_weights_as_torch(batch_first):
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(16, 4, batch_first=batch_first).eval()
    slim = SlimMultiheadAttention.from_torch(mha).eval()
    x = torch.randn(2, 5, 16) if batch_first else torch.randn(5, 2, 16)
    pad = torch.tensor([[False] * 5, [False, False, False, True, True]])
    causal = torch.triu(torch.ones(5, 5, dtype=torch.bool), 1)
    for kwargs in ({}, {"key_padding_mask": pad}, {"attn_mask": causal}, {"average_attn_weights": False}):
        want, want_w = mha(x, x, x, **kwargs)
        got, got_w = slim(x, x, x, **kwargs)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(got_w, want_w, atol=1e-5, rtol=1e-5)


def test_convert_and_save_load(tmp_path):
    class M(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attn = nn.MultiheadAttention(16, 4, batch_first=True)

        def forward(self, x):
            return self.attn(x, x, x, need_weights=False)[0]

    model, x = M().eval(), torch.randn(2, 5, 16)
    want = model(x)
    assert convert_attention(model) == ["attn"]
    torch.testing.assert_close(model(x), want, atol=1e-5, rtol=1e-5)
    loaded = st.load(st.save(model, tmp_path / "m"), M()).eval()
    assert isinstance(loaded.attn, SlimMultiheadAttention)
    torch.testing.assert_close(loaded(x), model(x))


def test_transformer_encoder_layer_runs_after_head_pruning():
    layer = nn.TransformerEncoderLayer(32, 4, 64, batch_first=True, dropout=0.0).eval()
    x = torch.randn(2, 6, 32)
    st.prune(layer, st.StructuredPruning(ratio=0.5), example_inputs=x)
    assert layer.self_attn.num_heads == 2 and layer.linear1.out_features == 32
    assert layer(x).shape == x.shape
