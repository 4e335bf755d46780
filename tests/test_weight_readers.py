"""Layers whose parent reads their ``.weight`` in its own forward stay as they are, in every swapping family."""

import copy
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import slimtorch as st
from slimtorch.layer_kinds import weight_readers
from slimtorch.summary import last_summary

sys.path.insert(0, str(Path(__file__).parent / "conformance"))
import torchvision_guard  # noqa: E402

torchvision_guard.install()


class ReadsProj(nn.Module):
    """A block that hands its child's weight to a functional kernel, as torch's attention modules do."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(16, 16)
        self.mlp = nn.Linear(16, 16)

    def forward(self, x):
        return self.mlp(torch.relu(nn.functional.linear(x, self.proj.weight, self.proj.bias)))


class Custom(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem, self.block, self.head = nn.Linear(8, 16), ReadsProj(), nn.Linear(16, 4)

    def forward(self, x):
        return self.head(self.block(self.stem(x)))


class WithMHA(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed, self.attn, self.head = nn.Linear(8, 16), nn.MultiheadAttention(16, 2, batch_first=True), \
            nn.Linear(16, 4)

    def forward(self, x):
        h = self.embed(x)
        return self.head(self.attn(h, h, h, need_weights=False)[0])


class ReadsDeepDtype(nn.Module):
    """Hugging Face ViTModel's pattern: ``self.embeddings.patch_embeddings.projection.weight.dtype`` in forward."""

    def __init__(self):
        super().__init__()
        self.embeddings = nn.Module()
        self.embeddings.patch = nn.Linear(12, 8)
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        x = x.to(self.embeddings.patch.weight.dtype)
        return self.head(torch.relu(self.embeddings.patch(x)))


def _swin():
    torchvision = pytest.importorskip("torchvision")
    return torchvision.models.SwinTransformer(patch_size=[4, 4], embed_dim=16, depths=[1, 1], num_heads=[2, 2],
                                              window_size=[4, 4], num_classes=10)


MODELS = {
    "custom": (Custom, lambda: torch.randn(4, 8), {"block.proj"}),
    "mha": (WithMHA, lambda: torch.randn(2, 5, 8), {"attn.out_proj"}),
    "deep": (ReadsDeepDtype, lambda: torch.randn(4, 12), {"embeddings.patch"}),
    "swin": (_swin, lambda: torch.randn(2, 3, 32, 32),
             {"features.1.0.attn.qkv", "features.1.0.attn.proj", "features.3.0.attn.qkv", "features.3.0.attn.proj"}),
}
FAMILIES = {  # config, verb, tolerance relative to the float output's scale (None: runs and is finite)
    "dynamic": (st.DynamicQuant(), st.quantize, 0.1),
    "static": (st.StaticQuant(calibration_batches=2), st.quantize, 0.2),
    "binary": (st.Binarize(keep_first=False, keep_last=False), st.quantize, None),
    "lowrank": (st.LowRank(rank_ratio=0.5, keep_head=False), st.decompose, None),
}


def test_the_rule_finds_torch_and_custom_readers():
    assert set(weight_readers(Custom())) == {"block.proj"}
    reason = weight_readers(Custom())["block.proj"]
    assert reason == "its parent block (ReadsProj) reads its .weight directly in forward; it stays as it is"
    assert set(weight_readers(nn.MultiheadAttention(8, 2))) == {"out_proj"}
    assert {"linear1", "linear2", "self_attn.out_proj"} <= set(weight_readers(nn.TransformerEncoderLayer(8, 2, 16)))


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("model_name", MODELS)
def test_readers_stay_and_the_model_runs(model_name, family):
    make, inputs, readers = MODELS[model_name]
    config, verb, tol = FAMILIES[family]
    torch.manual_seed(0)
    model = make().eval()
    x = inputs()
    with torch.no_grad():
        ref = model(x)
    kwargs = {"data": [inputs() for _ in range(2)]} if family == "static" else {}
    out_model = verb(copy.deepcopy(model), config, **kwargs).eval()
    with torch.no_grad():
        got = out_model(x)
    assert got.shape == ref.shape and torch.isfinite(got).all()
    if tol is not None:
        assert (got - ref).abs().max() <= tol * ref.abs().max() + 1e-3
    summary = last_summary(out_model)
    assert readers <= set(summary.skipped) and summary.changed
    assert all("reads its .weight directly in forward" in summary.skipped[n] for n in readers)
    for name in readers:
        assert type(out_model.get_submodule(name)) is type(model.get_submodule(name))


def test_a_model_whose_every_linear_is_read_is_unsupported_and_untouched():
    model = nn.TransformerEncoder(nn.TransformerEncoderLayer(16, 2, 32, batch_first=True), 2).eval()
    with pytest.raises(st.UnsupportedModelError, match="TransformerEncoder it was pointed at.*reads its .weight"):
        st.quantize(model, st.DynamicQuant())
    assert not any(type(m).__module__.startswith("slimtorch") for m in model.modules())


def test_a_parent_without_source_reads_nothing():
    namespace = {"nn": nn, "torch": torch}
    exec("class NoSource(nn.Module):\n    def __init__(self):\n        super().__init__()\n"  # noqa: S102 - no file
         "        self.proj = nn.Linear(4, 4)\n    def forward(self, x):\n        return x @ self.proj.weight\n",
         namespace)
    assert weight_readers(namespace["NoSource"]()) == {}
