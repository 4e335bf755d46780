"""Width attributes and config fields follow structured pruning: torchvision's and timm's ViTs read widths
from attributes in ``forward``; a pruned Hugging Face model's config describes its weights, so it round-trips
through ``save_pretrained``/``from_pretrained`` as well as ``st.save``/``st.load``."""

import copy
import logging

import pytest
import torch
from torch import nn

import slimtorch as st
from slimtorch.graph.attention import SlimMultiheadAttention

IMAGE = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def n_params(m):
    return sum(p.numel() for p in m.parameters())


def torchvision_vit():
    torchvision = pytest.importorskip("torchvision")
    return torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=4,
                                                hidden_dim=64, mlp_dim=128, num_classes=10).eval()


def test_torchvision_vit_prunes_width_heads_and_mlp(tmp_path):
    torch.manual_seed(0)
    model = torchvision_vit()
    before = n_params(model)
    st.prune(model, st.StructuredPruning(ratio=0.5), example_inputs=IMAGE[:1])
    assert (model.hidden_dim, model.mlp_dim) == (32, 64)
    assert model.conv_proj.out_channels == 32 and model.class_token.shape == (1, 1, 32)
    for block in model.encoder.layers:
        attn = block.self_attention
        assert isinstance(attn, SlimMultiheadAttention)
        assert (block.num_heads, attn.num_heads, attn.head_dim, attn.embed_dim, attn.kdim, attn.vdim) == (
            2, 2, 16, 32, 32, 32)
        assert block.mlp[0].out_features == 64
    assert n_params(model) < 0.5 * before
    out = model(IMAGE)
    assert out.shape == (2, 10) and torch.isfinite(out).all()
    torch.manual_seed(1)
    loaded = st.load(st.save(model, tmp_path / "vit"), torchvision_vit())
    assert loaded.hidden_dim == 32
    torch.testing.assert_close(loaded(IMAGE), out)


def timm_vit():
    timm = pytest.importorskip("timm")
    return timm.create_model("vit_tiny_patch16_224", img_size=32, depth=2, num_classes=10, pretrained=False).eval()


def test_timm_vit_prunes_width_heads_and_mlp(tmp_path):
    torch.manual_seed(0)
    model = timm_vit()
    before = n_params(model)
    st.prune(model, st.StructuredPruning(ratio=0.5), example_inputs=IMAGE[:1])
    assert model.patch_embed.proj.out_channels == 96
    assert model.embed_dim == model.num_features == 96
    for block in model.blocks:  # 3 heads of 64: the fused qkv loses one head of each of q, k and v
        assert (block.attn.num_heads, block.attn.head_dim, block.attn.attn_dim) == (2, 64, 128)
        assert block.attn.qkv.out_features == 3 * 128 and block.mlp.fc1.out_features == 384
    assert n_params(model) < 0.5 * before
    out = model(IMAGE)
    assert out.shape == (2, 10)
    torch.manual_seed(1)
    torch.testing.assert_close(st.load(st.save(model, tmp_path / "vit"), timm_vit())(IMAGE), out)


def test_timm_fused_qkv_head_cut_equals_silencing_the_head():
    torch.manual_seed(0)
    model = timm_vit()
    reference = copy.deepcopy(model)
    st.prune(model, st.StructuredPruning(ratio=0.5, importance="random"), example_inputs=IMAGE[:1],
             select=["*.attn.qkv"])
    for pruned, dense in zip(model.blocks, reference.blocks, strict=True):
        q = dense.attn.qkv.weight[:192].reshape(3, 64, -1)
        kept = [h for h in range(3) if any(torch.equal(q[h], pruned.attn.qkv.weight[64 * j:64 * (j + 1)])
                                           for j in range(2))]
        assert len(kept) == 2
        with torch.no_grad():
            for h in set(range(3)) - set(kept):
                dense.attn.proj.weight[:, 64 * h:64 * (h + 1)] = 0
    torch.testing.assert_close(model(IMAGE), reference(IMAGE), atol=1e-5, rtol=0)


transformers = pytest.importorskip("transformers")
IDS = torch.randint(0, 100, (2, 12), generator=torch.Generator().manual_seed(0))


def bert():
    cfg = transformers.BertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                                  vocab_size=100, max_position_embeddings=32, num_labels=3)
    return transformers.BertForSequenceClassification(cfg).eval()


def llama(kv_heads):
    cfg = transformers.LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=kv_heads, vocab_size=100, max_position_embeddings=32)
    return transformers.LlamaForCausalLM(cfg).eval()


def round_trips(model, make, tmp_path):
    """save_pretrained/from_pretrained and st.save/st.load both give the pruned model back."""
    out = model(IDS).logits
    model.save_pretrained(tmp_path / "hf")
    again, info = type(model).from_pretrained(tmp_path / "hf", output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs")), info
    torch.testing.assert_close(again.eval()(IDS).logits, out, atol=1e-5, rtol=0)
    torch.manual_seed(1)
    loaded = st.load(st.save(model, tmp_path / "st"), make())
    torch.testing.assert_close(loaded(IDS).logits, out, atol=1e-5, rtol=0)


def test_bert_config_follows_heads_mlp_and_hidden_width(tmp_path):
    torch.manual_seed(0)
    model = bert()
    st.prune(model, st.StructuredPruning(ratio=0.5), example_inputs=IDS[:1])
    cfg, layer = model.config, model.bert.encoder.layer[0]
    assert (cfg.hidden_size, cfg.num_attention_heads, cfg.intermediate_size) == (32, 2, 64)
    assert model.bert.embeddings.word_embeddings.embedding_dim == 32
    assert layer.attention.self.num_attention_heads == 2 and layer.attention.self.attention_head_size == 16
    assert layer.intermediate.dense.out_features == 64
    round_trips(model, bert, tmp_path)


def test_llama_without_gqa_prunes_heads_and_mlp(tmp_path):
    torch.manual_seed(0)
    model = llama(kv_heads=4)
    with pytest.warns(UserWarning, match="input_layernorm"):  # the residual width is kept (RMSNorm's mean)
        st.prune(model, st.StructuredPruning(ratio=0.5), example_inputs=IDS[:1])
    cfg, attn = model.config, model.model.layers[0].self_attn
    assert (cfg.hidden_size, cfg.intermediate_size, cfg.num_attention_heads, cfg.num_key_value_heads,
            cfg.head_dim) == (64, 64, 2, 2, 16)
    assert (attn.q_proj.out_features, attn.k_proj.out_features, attn.num_key_value_groups) == (32, 32, 1)
    round_trips(model, lambda: llama(4), tmp_path)


def test_llama_gqa_removes_key_value_heads_with_their_query_heads(tmp_path):
    torch.manual_seed(0)
    model = llama(kv_heads=2)
    with pytest.warns(UserWarning, match="input_layernorm"):
        st.prune(model, st.StructuredPruning(ratio=0.5), example_inputs=IDS[:1])
    cfg, attn = model.config, model.model.layers[0].self_attn
    assert (cfg.intermediate_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim) == (64, 2, 1, 16)
    assert (attn.q_proj.out_features, attn.k_proj.out_features, attn.num_key_value_groups) == (32, 16, 2)
    round_trips(model, lambda: llama(2), tmp_path)


def test_llama_gqa_head_cut_equals_silencing_the_removed_query_heads():
    torch.manual_seed(0)
    model = llama(kv_heads=2)
    reference = copy.deepcopy(model)
    with pytest.warns(UserWarning):
        st.prune(model, st.StructuredPruning(ratio=0.5, importance="random"), example_inputs=IDS[:1],
                 select=["*.self_attn.*"])
    for pruned, dense in zip(model.model.layers, reference.model.layers, strict=True):
        kv = [j for j in range(2) if torch.equal(pruned.self_attn.k_proj.weight, dense.self_attn.k_proj.weight[
            16 * j:16 * (j + 1)])]
        assert len(kv) == 1  # query heads 2j and 2j+1 read key/value head j: only they survive
        silenced = [h for h in range(4) if h // 2 != kv[0]]
        with torch.no_grad():
            for h in silenced:
                dense.self_attn.o_proj.weight[:, 16 * h:16 * (h + 1)] = 0
    torch.testing.assert_close(model(IDS).logits, reference(IDS).logits, atol=1e-5, rtol=0)


def test_uneven_layers_leave_the_config_field_and_say_so(caplog):
    torch.manual_seed(0)
    model = bert()
    with caplog.at_level(logging.WARNING, logger="slimtorch"):
        st.prune(model, st.StructuredPruning(ratio=0.5), example_inputs=IDS[:1],
                 select=["bert.encoder.layer.0.intermediate.dense"])
    layers = model.bert.encoder.layer
    assert (layers[0].intermediate.dense.out_features, layers[1].intermediate.dense.out_features) == (64, 128)
    assert model.config.intermediate_size == 128
    assert "config.intermediate_size=128" in caplog.text and "from_pretrained" in caplog.text
    assert model(IDS).logits.shape == (2, 3)


class Block(nn.Module):
    def __init__(self, d, hidden):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(d, hidden), nn.Linear(hidden, d)

    def forward(self, x):
        return x + self.fc2(torch.relu(self.fc1(x)))


class Stack(nn.Module):
    """Residual width and MLP width are both 16: only the name says which attribute is which."""

    def __init__(self):
        super().__init__()
        self.hidden_dim = self.mlp_dim = 16
        self.layers = nn.ModuleList([Block(16, 16), Block(16, 16)])

    def forward(self, x):
        x = x.reshape(x.shape[0], self.hidden_dim)
        for layer in self.layers:
            x = layer(x)
        return x  # the residual reaches the output: its width is kept


def test_equal_widths_are_told_apart_by_role():
    model = Stack()
    st.prune(model, st.StructuredPruning(ratio=0.5), example_inputs=torch.randn(1, 16))
    assert (model.hidden_dim, model.mlp_dim) == (16, 8)
    assert [layer.fc1.out_features for layer in model.layers] == [8, 8]
    assert model.__dict__["_slim_attrs"] == {"mlp_dim": 8}


def test_a_config_that_cannot_describe_the_widths_is_reported_and_round_to_fixes_it(caplog, tmp_path):
    torch.manual_seed(0)
    model = bert()
    with caplog.at_level(logging.WARNING, logger="slimtorch"):  # 45 hidden channels, 3 heads of 16
        st.prune(model, st.StructuredPruning(ratio=0.3), example_inputs=IDS[:1])
    assert model.config.hidden_size == 45 and model.config.num_attention_heads == 3
    assert "model.config no longer describes" in caplog.text and "round_to" in caplog.text
    torch.manual_seed(0)
    model = bert()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="slimtorch"):
        st.prune(model, st.StructuredPruning(ratio=0.3, round_to=16), example_inputs=IDS[:1])
    assert (model.config.hidden_size, model.config.num_attention_heads) == (48, 3) and not caplog.text
    round_trips(model, bert, tmp_path)
