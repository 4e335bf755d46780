"""``slimtorch.load`` round trips of third-party models are exact (faults found by the conformance matrix).

Loaded tensors get their own 64-byte aligned storage (views into the file's buffer made oneDNN/MKL round
differently), module versions reach ``_load_from_state_dict`` (torchvision's MNASNet), a Hugging Face config
follows structured pruning through save and load, and torch-layer subclasses (torchvision ``LayerNorm2d``, timm
``Conv2dSame``/``BatchNormAct2d``) keep their pruned sizes.
"""

import copy
import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

import slimtorch as st
from slimtorch.io.load import read_manifest
from slimtorch.io.save import digest


def round_trip(model: nn.Module, build, x, tmp_path) -> nn.Module:
    model.eval()
    loaded = st.load(st.save(model, tmp_path / "m"), model=build()).eval()
    with torch.no_grad():
        a, b = model(x), loaded(x)
    a, b = getattr(a, "logits", a), getattr(b, "logits", b)
    assert torch.equal(a, b)
    return loaded


def rewrite_manifest(path, edit) -> None:
    """Edit the manifest of a saved file and sign it again (a file written by another slimtorch); the edit
    starts from the manifest first saved there."""
    tensors = load_file(str(path))
    original = path.with_name(path.name + ".manifest.json")
    if not original.exists():
        original.write_text(json.dumps(read_manifest(path)))
    manifest = json.loads(original.read_text())
    edit(manifest)
    signed = {k: v for k, v in manifest.items() if k != "sha256"}
    manifest["sha256"] = digest(tensors, signed)
    save_file(tensors, str(path), metadata={"slimtorch": json.dumps(manifest)})


def test_loaded_tensors_are_aligned_and_resnet_outputs_bit_exact(tmp_path):
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    build = lambda: torchvision.models.resnet18(weights=None)  # noqa: E731
    loaded = round_trip(build(), build, torch.randn(2, 3, 32, 32), tmp_path)
    misaligned = [n for n, t in loaded.state_dict().items() if t.data_ptr() % 64]
    assert not misaligned


def test_tied_tensors_stay_tied_after_the_aligned_copy(tmp_path):
    model = nn.Sequential(nn.Embedding(10, 8), nn.Linear(8, 10, bias=False))
    model[1].weight = model[0].weight
    loaded = round_trip(model, lambda: nn.Sequential(nn.Embedding(10, 8), nn.Linear(8, 10, bias=False)),
                        torch.arange(6), tmp_path)
    assert loaded[1].weight.data_ptr() == loaded[0].weight.data_ptr()  # one storage, as saved


def test_mnasnet_loads_with_its_module_versions(tmp_path):
    torchvision = pytest.importorskip("torchvision")
    build = lambda: torchvision.models.mnasnet0_5(weights=None)  # noqa: E731
    round_trip(build(), build, torch.randn(1, 3, 32, 32), tmp_path)
    assert read_manifest(tmp_path / "m")["versions"][""] == {"version": 2}


def test_files_without_module_versions_still_load_and_malformed_versions_are_refused(tmp_path):
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4)).eval()
    path = st.save(model, tmp_path / "m")
    rewrite_manifest(path, lambda m: m.pop("versions"))
    st.load(path, model=nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4)))
    for bad in ([1], {"1": 2}, {"1": {"version": "2"}}, {"1": {"version": True}}, {"1": {"version": 2, "x": 1}}):
        rewrite_manifest(path, lambda m, bad=bad: m.update(versions=bad))
        with pytest.raises(st.ArtifactError, match="manifest field 'versions'"):
            st.load(path, model=nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4)))


def bert_config():
    transformers = pytest.importorskip("transformers")
    return transformers.BertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                                   vocab_size=100)


def test_pruned_bert_loads_into_a_model_from_a_fresh_config_with_the_pruned_config(tmp_path):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    model = transformers.BertForSequenceClassification(bert_config()).eval()
    ids = torch.randint(0, 100, (2, 8))
    st.prune(model, st.StructuredPruning(ratio=0.5), example_inputs=ids)
    pruned = {k: getattr(model.config, k) for k in ("hidden_size", "intermediate_size", "num_attention_heads")}
    assert pruned == {"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2}
    loaded = round_trip(model, lambda: transformers.BertForSequenceClassification(bert_config()), ids, tmp_path)
    assert {k: getattr(loaded.config, k) for k in pruned} == pruned
    assert loaded.bert.config is loaded.config
    for a, b in zip(model.bert.encoder.layer, loaded.bert.encoder.layer, strict=True):
        for attr in ("num_attention_heads", "attention_head_size", "all_head_size"):
            assert getattr(b.attention.self, attr) == getattr(a.attention.self, attr)
    # a model built from the pruned config (saved with save_pretrained) loads exactly too: the head width is kept
    round_trip(model, lambda: transformers.BertForSequenceClassification(copy.deepcopy(model.config)), ids,
               tmp_path)


def test_recorded_config_fields_are_plain_data_only(tmp_path):
    transformers = pytest.importorskip("transformers")
    model = transformers.BertForSequenceClassification(bert_config()).eval()
    path = st.save(model, tmp_path / "m")
    for key, value in (("config.to_dict", 1), ("config._commit_hash", "x"), ("config.hidden_size", [1]),
                       ("config.no_such_field", 1), ("bert.hidden_size", 1), ("config.hidden_size.real", 1)):
        rewrite_manifest(path, lambda m, key=key, value=value: m.update(attrs={"": {key: value}}))
        with pytest.raises(st.ArtifactError, match="no such plain attribute"):
            st.load(path, model=transformers.BertForSequenceClassification(bert_config()))


class LayerNorm2dNet(nn.Module):
    def __init__(self):
        super().__init__()
        from torchvision.models.convnext import LayerNorm2d

        self.conv = nn.Conv2d(3, 32, 3, padding=1)
        self.norm = LayerNorm2d(32)
        self.head = nn.Conv2d(32, 4, 1)

    def forward(self, x):
        return self.head(self.norm(self.conv(x)))


def test_torchvision_layernorm2d_keeps_its_pruned_shape(tmp_path):
    pytest.importorskip("torchvision")
    torch.manual_seed(0)
    x = torch.randn(2, 3, 8, 8)
    model = LayerNorm2dNet()
    st.prune(model, st.StructuredPruning(ratio=0.5), example_inputs=x)
    loaded = round_trip(model, LayerNorm2dNet, x, tmp_path)
    assert tuple(loaded.norm.normalized_shape) == (16,)


def test_timm_deit_tiny_structured_round_trip(tmp_path):
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    build = lambda: timm.create_model("deit_tiny_patch16_224", img_size=32, pretrained=False)  # noqa: E731
    x = torch.randn(1, 3, 32, 32)
    model = build()
    st.prune(model, st.StructuredPruning(ratio=0.5), example_inputs=x)
    loaded = round_trip(model, build, x, tmp_path)
    assert tuple(loaded.norm.normalized_shape) == tuple(model.norm.normalized_shape) == (96,)


class TimmSubclassNet(nn.Module):
    def __init__(self):
        super().__init__()
        from timm.layers import BatchNormAct2d, Conv2dSame

        self.conv = Conv2dSame(3, 32, 3, stride=2)
        self.bn = BatchNormAct2d(32)
        self.head = nn.Conv2d(32, 4, 1)

    def forward(self, x):
        return self.head(self.bn(self.conv(x)))


def test_timm_conv2dsame_and_batchnormact2d_keep_their_pruned_sizes(tmp_path):
    pytest.importorskip("timm")
    torch.manual_seed(0)
    x = torch.randn(2, 3, 9, 9)
    model = TimmSubclassNet()
    st.prune(model, st.StructuredPruning(ratio=0.5), example_inputs=x)
    loaded = round_trip(model, TimmSubclassNet, x, tmp_path)
    assert (loaded.conv.out_channels, loaded.bn.num_features) == (model.conv.out_channels, model.bn.num_features) \
        == (16, 16)
