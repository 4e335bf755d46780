"""GPT-2's ``Conv1D`` (a Linear whose weight is stored ``(in, out)``) through every pruning and low-rank family:
a 2-block GPT-2 from a small config (nothing downloaded)."""

import pytest
import torch

import slimtorch as st
from slimtorch.lowrank.modules import LowRankLinear
from slimtorch.prune.masks import sparse_layers
from slimtorch.prune.semistructured import nm_violations
from slimtorch.prune.sparse_linear import SparseLinear, use_sparse_kernels
from slimtorch.summary import last_summary

transformers = pytest.importorskip("transformers")
from transformers.pytorch_utils import Conv1D  # noqa: E402

IDS = torch.randint(0, 100, (2, 16), generator=torch.Generator().manual_seed(0))


def gpt2(low_rank: int | None = None):
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=100, n_positions=32,
                                  bos_token_id=0, eos_token_id=0)
    model = transformers.GPT2LMHeadModel(cfg).eval()
    if low_rank:  # weights of rank low_rank: energy 0.999 finds it, the factors reproduce the layer
        gen = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for m in conv1ds(model).values():
                n_in, n_out = m.weight.shape
                m.weight.copy_(torch.randn(n_in, low_rank, generator=gen) @ torch.randn(low_rank, n_out, generator=gen)
                               * 0.02)
    return model


def conv1ds(model):
    return {n: m for n, m in model.named_modules() if isinstance(m, Conv1D)}


def logits(model):
    return model(IDS).logits


def test_unstructured_prunes_every_conv1d(tmp_path):
    model = gpt2()
    st.prune(model, st.UnstructuredPruning(sparsity=0.5))
    layers = conv1ds(model)
    assert len(layers) == 8 and set(last_summary(model).details["layers"]) == set(layers)
    assert last_summary(model).details["overall"] == pytest.approx(0.5, abs=1e-3)
    assert all(float((m.weight == 0).float().mean()) > 0.2 for m in layers.values())
    assert float((model.lm_head.weight == 0).float().mean()) == 0  # the head (tied embedding) is left alone
    assert set(last_summary(model).changed) == set(layers)
    out = logits(st.make_permanent(model))
    loaded = st.load(st.save(model, tmp_path / "m"), gpt2())
    torch.testing.assert_close(logits(loaded), out, rtol=0, atol=0)
    assert set(sparse_layers(loaded)) == set(layers)  # fine-tuning with keep_zeros re-masks them


def test_nm_groups_run_along_the_input_dim(tmp_path):
    model = gpt2()
    st.prune(model, st.NMPruning(n=2, m=4))
    for m in conv1ds(model).values():
        assert nm_violations(m.weight.t(), 2, 4) == 0  # (out, in): groups of 4 consecutive inputs
        assert float((m.weight == 0).float().mean()) == 0.5
        assert nm_violations(m.weight, 2, 4) > 0  # along the output dim it is no 2:4 pattern
    out = logits(st.make_permanent(model))
    torch.testing.assert_close(logits(st.load(st.save(model, tmp_path / "m"), gpt2())), out, rtol=0, atol=0)


def test_lowrank_decomposes_conv1d(tmp_path):
    model = gpt2(low_rank=8)
    ref = logits(model)
    names = set(conv1ds(model))
    st.decompose(model, st.LowRank(energy=0.999))
    assert all(isinstance(model.get_submodule(n), LowRankLinear) for n in names)
    assert model.get_submodule("transformer.h.0.mlp.c_fc").rank == 8
    assert set(last_summary(model).changed) == names
    out = logits(model)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(logits(st.load(st.save(model, tmp_path / "m"), gpt2())), out, rtol=0, atol=0)


def test_structured_shrinks_the_mlp_width(tmp_path):
    model = gpt2()
    shape = logits(model).shape
    st.prune(model, st.StructuredPruning(ratio=0.5), example_inputs=IDS)
    c_fc, c_proj = model.transformer.h[0].mlp.c_fc, model.transformer.h[0].mlp.c_proj
    assert c_fc.weight.shape[1] == c_fc.nf == c_proj.weight.shape[0] < 256
    out = logits(model)
    assert out.shape == shape and torch.isfinite(out).all()
    torch.testing.assert_close(logits(st.load(st.save(model, tmp_path / "m"), gpt2())), out, rtol=0, atol=0)


def test_sparse_kernels_take_conv1d(tmp_path):
    model = st.make_permanent(st.prune(gpt2(), st.UnstructuredPruning(sparsity=0.9, scope="layer")))
    ref = logits(model)
    names = ["transformer.h.0.mlp.c_fc", "transformer.h.1.attn.c_attn"]
    use_sparse_kernels(model, IDS, layers=names, min_speedup=0.0)  # switch whatever the timing says
    assert all(isinstance(model.get_submodule(n), SparseLinear) for n in names)
    assert set(last_summary(model).changed) == set(names)
    out = logits(model)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(logits(st.load(st.save(model, tmp_path / "m"), gpt2())), out, rtol=0, atol=0)
