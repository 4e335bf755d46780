"""Hugging Face transformers models (tiny random configs, nothing downloaded): heads, neurons and the hidden
width are pruned by the same call; the models run and round-trip through save/load."""

import warnings

import pytest
import torch

import slimtorch as st

transformers = pytest.importorskip("transformers")


def bert():
    cfg = transformers.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=64, max_position_embeddings=32, num_labels=3)
    return transformers.BertForSequenceClassification(cfg).eval()


def gpt2():
    cfg = transformers.GPT2Config(vocab_size=100, n_embd=32, n_layer=2, n_head=4, n_positions=32,
                                  bos_token_id=0, eos_token_id=0)
    return transformers.GPT2LMHeadModel(cfg).eval()


def inputs(name):
    ids = torch.randint(0, 100, (1, 12), generator=torch.Generator().manual_seed(0))
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)} if name == "bert" else ids


def run(model, x):
    return (model(**x) if isinstance(x, dict) else model(x)).logits


@pytest.mark.parametrize("name, make", [("bert", bert), ("gpt2", gpt2)])
@pytest.mark.parametrize("ratio", [0.25, 0.5])
def test_hf_models_prune_heads_and_widths(name, make, ratio, tmp_path):
    torch.manual_seed(0)
    model, x = make(), inputs(name)
    shape, before = run(model, x).shape, sum(p.numel() for p in model.parameters())
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every layer of these models is understood: no warning at all
        st.prune(model, st.StructuredPruning(ratio=ratio), example_inputs=x)
    out = run(model, x)
    assert out.shape == shape and torch.isfinite(out).all()
    assert sum(p.numel() for p in model.parameters()) < (1 - ratio / 2) * before
    if name == "bert":
        attn = model.bert.encoder.layer[0].attention.self
        assert attn.num_attention_heads == round(4 * (1 - ratio)) and attn.query.out_features == attn.all_head_size
    else:
        attn = model.transformer.h[0].attn
        assert attn.c_attn.weight.shape[1] == 3 * attn.split_size == 3 * attn.head_dim * round(4 * (1 - ratio))
    torch.manual_seed(1)
    loaded = st.load(st.save(model, tmp_path / name), make())
    torch.testing.assert_close(run(loaded, x), out)


@pytest.mark.parametrize("name, make", [("bert", bert), ("gpt2", gpt2)])
def test_hf_layer_removal_runs_and_saves(name, make, tmp_path):
    from slimtorch.prune.layers import Skip

    torch.manual_seed(0)
    model, x = make(), inputs(name)
    shape = run(model, x).shape
    st.prune(model, st.LayerPruning(num_layers=1), example_inputs=x)
    layers = model.bert.encoder.layer if name == "bert" else model.transformer.h
    assert sum(isinstance(layer, Skip) for layer in layers) == 1
    out = run(model, x)
    assert out.shape == shape
    loaded = st.load(st.save(model, tmp_path / name), make())
    torch.testing.assert_close(run(loaded, x), out)
