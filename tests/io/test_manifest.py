"""The manifest of ``slimtorch.io.manifest``: module entries, the registry, tracked attributes and ``validate``.

Every tracked torch layer is described and rebuilt from its (JSON round-tripped) entry into a twin with the
same state-dict shapes and dtypes that computes the same function once it holds the same weights; unknown
types and bad arguments are refused with ``ArtifactError``; ``validate`` accepts well-formed manifests of
every version and names each malformed field. (Whole files under mutation are fuzzed in
tests/io/test_load_fuzz.py.)
"""

import copy
import json
import re

import pytest
import torch
from torch import nn

from slimtorch.errors import ArtifactError
from slimtorch.io import manifest
from slimtorch.io.manifest import build, describe, register_module, set_tracked_attr, validate
from slimtorch.prune.layers import Skip


def rebuilt(module):
    """The module rebuilt from its entry after a trip through JSON (as ``slimtorch.load`` reads it)."""
    entry = json.loads(json.dumps(describe(module)))
    return build(entry, "layer")


TRACKED = {
    "linear": (lambda: nn.Linear(5, 3), (2, 5)),
    "linear-no-bias": (lambda: nn.Linear(5, 3, bias=False), (2, 5)),
    "conv1d": (lambda: nn.Conv1d(4, 6, 3, stride=2, padding=1, dilation=2, bias=False), (2, 4, 11)),
    "conv2d-grouped": (lambda: nn.Conv2d(4, 6, (3, 1), stride=(2, 1), padding=(1, 0), groups=2), (2, 4, 7, 5)),
    "conv2d-same": (lambda: nn.Conv2d(3, 4, 3, padding="same", padding_mode="reflect"), (2, 3, 6, 6)),
    "conv-transpose2d": (lambda: nn.ConvTranspose2d(4, 2, 3, stride=2, padding=1, output_padding=1), (2, 4, 5, 5)),
    "batchnorm1d": (lambda: nn.BatchNorm1d(6, eps=1e-3, momentum=None), (4, 6)),
    "batchnorm2d-no-affine": (lambda: nn.BatchNorm2d(4, affine=False, track_running_stats=False), (2, 4, 3, 3)),
    "layernorm": (lambda: nn.LayerNorm([3, 4], eps=1e-6, bias=False), (2, 3, 4)),
    "layernorm-plain": (lambda: nn.LayerNorm(4, elementwise_affine=False), (2, 4)),
    "groupnorm": (lambda: nn.GroupNorm(2, 6, eps=1e-3), (2, 6, 3)),
    "embedding": (lambda: nn.Embedding(10, 4, padding_idx=0), None),
    "mha": (lambda: nn.MultiheadAttention(8, 2, bias=False, add_bias_kv=True, kdim=6, vdim=5, batch_first=True),
            None),
    "identity": (lambda: nn.Identity(), (2, 3)),
}


def randomized(module):
    torch.manual_seed(0)
    with torch.no_grad():
        for name, t in module.state_dict().items():
            if name.endswith("running_var"):
                t.uniform_(0.5, 1.5)
            elif t.is_floating_point():
                t.normal_()
    return module.eval()


def run(module, shape):
    if isinstance(module, nn.Embedding):
        return module(torch.tensor([[0, 3, 9], [2, 2, 1]]))
    if isinstance(module, nn.MultiheadAttention):
        q, k, v = torch.randn(2, 3, 8), torch.randn(2, 4, module.kdim), torch.randn(2, 4, module.vdim)
        return module(q, k, v)[0]
    return module(torch.randn(shape))


@pytest.mark.parametrize("name", sorted(TRACKED))
def test_every_tracked_layer_rebuilds_into_an_equivalent_twin(name):
    make, shape = TRACKED[name]
    original = randomized(make())
    twin = rebuilt(original)
    assert type(twin) is type(original) and describe(twin) == describe(original)
    want = {k: (v.shape, v.dtype) for k, v in original.state_dict().items()}
    assert {k: (v.shape, v.dtype) for k, v in twin.state_dict().items()} == want
    twin.load_state_dict(original.state_dict())
    torch.manual_seed(1)
    a = run(original, shape)
    torch.manual_seed(1)
    torch.testing.assert_close(run(twin.eval(), shape), a, rtol=0, atol=0)


@pytest.mark.parametrize("make, x", [
    pytest.param(lambda: nn.Embedding(10, 4, max_norm=1.0), torch.tensor([1, 2, 3]), id="embedding-max-norm"),
    pytest.param(lambda: nn.MultiheadAttention(8, 2, add_zero_attn=True), torch.randn(3, 1, 8),
                 id="mha-add-zero-attn"),
])
def test_arguments_that_change_the_forward_survive_the_rebuild(make, x):
    torch.manual_seed(0)
    original = make().eval()
    with torch.no_grad():
        for p in original.parameters():
            p.mul_(4)  # embedding rows of norm > 1 (max_norm renormalizes them), attention scores far from 0
    twin = rebuilt(original).eval()
    twin.load_state_dict(original.state_dict())
    run_twin = twin(x) if isinstance(twin, nn.Embedding) else twin(x, x, x)[0]
    run_original = copy.deepcopy(original)(x) if isinstance(original, nn.Embedding) else original(x, x, x)[0]
    torch.testing.assert_close(run_twin, run_original)


def test_untracked_modules_are_not_described():
    class MyLinear(nn.Linear):
        pass

    assert describe(nn.ReLU()) is None and describe(nn.Sequential()) is None
    assert describe(MyLinear(3, 2)) is None  # a subclass may have its own forward: slimtorch keeps it
    assert describe(nn.Conv3d(2, 2, 1)) is None


def test_registered_modules_are_described_and_rebuilt_by_class_name(monkeypatch):
    monkeypatch.setattr(manifest, "MODULES", dict(manifest.MODULES))

    @register_module
    class Scale(nn.Module):
        def __init__(self, n, value=1.0):
            super().__init__()
            self.n, self.value = n, value
            self.weight = nn.Parameter(torch.full((n,), value))

        def manifest_args(self):
            return {"n": self.n, "value": self.value}

    entry = describe(Scale(3, 2.0))
    assert entry == {"type": "Scale", "args": {"n": 3, "value": 2.0}}
    twin = build(entry, "s")
    assert isinstance(twin, Scale) and twin.weight.tolist() == [2.0, 2.0, 2.0]
    out = build({"type": "Skip", "args": {"tuple_output": True}}, "b")(torch.ones(1))
    assert isinstance(out, tuple) and torch.equal(out[0], torch.ones(1))
    assert describe(Skip()) == {"type": "Skip", "args": {"tuple_output": False}}

    class Scale(nn.Module):  # noqa: F811 - another class under a registered name is not that module
        def manifest_args(self):
            return {}

    assert describe(Scale()) is None


def test_register_module_requires_manifest_args(monkeypatch):
    monkeypatch.setattr(manifest, "MODULES", dict(manifest.MODULES))

    class NoArgs(nn.Module):
        pass

    with pytest.raises(TypeError, match="NoArgs must define manifest_args"):
        register_module(NoArgs)
    assert "NoArgs" not in manifest.MODULES


@pytest.mark.parametrize("entry, message", [
    ({"type": "os.system", "args": {"command": "echo hi"}}, "module 'a.b' has type 'os.system', which this "
                                                             "slimtorch does not know"),
    ({"type": "torch.nn.ReLU", "args": {}}, "does not know"),  # a torch class, but not a tracked one
    ({"args": {}}, "has type None"),
    ({"type": "torch.nn.Linear", "args": {"in_features": 3}}, r"cannot rebuild module 'a.b' \(torch.nn.Linear\)"),
    ({"type": "torch.nn.Linear", "args": {"in_features": 3, "out_features": 2, "device": "nowhere"}},
     "cannot rebuild"),
    ({"type": "torch.nn.Conv2d", "args": {"in_channels": 3, "out_channels": 4, "kernel_size": [3, 3],
                                          "groups": 2}}, "cannot rebuild"),
    ({"type": "torch.nn.Embedding", "args": {"num_embeddings": -1, "embedding_dim": 2}}, "cannot rebuild"),
])
def test_build_refuses_unknown_types_and_bad_arguments(entry, message):
    with pytest.raises(ArtifactError, match=message):
        build(entry, "a.b")


def test_build_turns_json_lists_into_the_tuples_torch_layers_keep():
    conv = build({"type": "torch.nn.Conv2d", "args": {"in_channels": 2, "out_channels": 2, "kernel_size": [3, 1],
                                                      "stride": [2, 1], "padding": [1, 0], "dilation": [1, 1]}}, "c")
    assert (conv.kernel_size, conv.stride, conv.padding, conv.dilation) == ((3, 1), (2, 1), (1, 0), (1, 1))
    up = build({"type": "torch.nn.ConvTranspose2d", "args": {"in_channels": 2, "out_channels": 2, "kernel_size": 3,
                                                             "stride": 2, "output_padding": [1, 1]}}, "u")
    assert up.output_padding == (1, 1) and up(torch.zeros(1, 2, 4, 4)).shape == (1, 2, 10, 10)


def test_set_tracked_attr_sets_and_records_plain_and_held_fields():
    module = nn.Linear(2, 2)
    module.config = type("Config", (), {})()
    module.config.hidden_size = 8
    set_tracked_attr(module, "num_heads", 2)
    set_tracked_attr(module, "config.hidden_size", 4)
    set_tracked_attr(module, "num_heads", 1)
    assert module.num_heads == 1 and module.config.hidden_size == 4
    assert vars(module)["_slim_attrs"] == {"num_heads": 1, "config.hidden_size": 4}


# ---- validate ----


def header(**changes):
    """A well-formed v3 manifest with every field, changed by ``changes`` (None: the field removed)."""
    h = {
        "format": "slimtorch", "version": 3, "slimtorch_version": "9.9",
        "modules": {"fc": {"type": "torch.nn.Linear", "args": {"in_features": 2, "out_features": 2, "bias": True}},
                    "skip": {"type": "Skip"}},
        "attrs": {"": {"heads": 2, "mode": "same", "scale": 0.5, "on": True, "sizes": [1, 2], "none": None}},
        "tied": {"head.weight": "embed.weight"},
        "sparse": {"fc.weight": {"shape": [2, 2], "form": "bits"}, "w": {"shape": [0], "form": "index"}},
        "training": False,
        "sha256": "ab" * 32,
        "tree": {"types": ["torch.nn.modules.linear.Linear"], "modules": [["", 0], ["fc", 0]]},
        "extra": {"anything": [1, {"x": None}]},
        "versions": {"": {"version": 1}, "bn": {"version": 2}},
    }
    for key, value in changes.items():
        if value is None:
            del h[key]
        else:
            h[key] = value
    return h


def test_well_formed_manifests_of_every_version_pass_unchanged():
    full = header()
    assert validate(full, "f") is full
    minimal = {"format": "slimtorch", "version": 3, "modules": {}, "tree": {"types": [], "modules": []}}
    assert validate(minimal, "f") is minimal
    v2 = header(version=2, tree=None)  # the module tree is required from v3 on
    assert validate(v2, "f") is v2
    v1 = {"format": "slimtorch", "version": 1, "modules": {}, "sparse": {"fc.weight": [4, 4]}}  # v1 sparse: a shape
    assert validate(v1, "f") is v1


@pytest.mark.parametrize("bad", [None, [], "slimtorch", {"version": 3}, {"format": "torch", "version": 3}])
def test_validate_refuses_what_is_not_a_slimtorch_manifest(bad):
    with pytest.raises(ArtifactError, match=r"^file\.safetensors: the manifest is malformed"):
        validate(bad, "file.safetensors")


@pytest.mark.parametrize("version", [None, 0, -1, "3", 3.0, True, [3]])
def test_validate_refuses_a_version_that_is_not_a_positive_integer(version):
    with pytest.raises(ArtifactError, match=re.escape(f"manifest field 'version' is {version!r}, not a positive")):
        validate(header(version=version), "f")


def test_validate_asks_for_an_upgrade_for_newer_manifests():
    with pytest.raises(ArtifactError, match=r"written by slimtorch 9.9 \(manifest v4\); upgrade slimtorch"):
        validate(header(version=manifest.VERSION + 1), "f")


@pytest.mark.parametrize("field, version", [("modules", 1), ("modules", 3), ("tree", 3)])
def test_validate_requires_the_fields_of_its_version(field, version):
    with pytest.raises(ArtifactError, match=f"the manifest \\(v{version}\\) has no field '{field}'"):
        validate(header(**{field: None, "version": version}), "f")


@pytest.mark.parametrize("field", ["attrs", "tied", "sparse", "training", "sha256", "extra", "versions"])
def test_validate_allows_optional_fields_to_be_missing(field):
    validate(header(**{field: None}), "f")


MALFORMED = {
    "modules": [[], {"fc": None}, {"fc": {"args": {}}}, {"fc": {"type": 3}}, {"fc": {"type": "X", "args": []}},
                {"fc": "torch.nn.Linear"}],
    "attrs": [[], {"": 1}, {"": {"x": {"nested": 1}}}, {"": {"x": (1, 2)}}],
    "tied": [[], {"a": 1}, {"a": None}],
    "sparse": [[], {"w": {"shape": [2], "form": "csr"}}, {"w": {"shape": [-1], "form": "bits"}},
               {"w": {"shape": [True], "form": "bits"}}, {"w": {"shape": "2x2", "form": "bits"}}, {"w": [2.0]},
               {"w": {"form": "bits"}}],
    "training": [0, 1, "false", None],
    "sha256": [1, None, b"ab"],
    "tree": [[], {"types": [], "modules": [["", 0]]}, {"types": ["T"], "modules": [["", 1]]},
             {"types": ["T"], "modules": [["", -1]]}, {"types": ["T"], "modules": [["", True]]},
             {"types": ["T"], "modules": [["", 0], ["", 0]]}, {"types": ["T"], "modules": [["", 0, 1]]},
             {"types": [1], "modules": []}, {"types": ["T"]}, {"modules": []}, {"types": "T", "modules": []}],
    "extra": [[], "x", 1],
    "versions": [[], {"": 1}, {"": {"version": "1"}}, {"": {"version": True}}, {"": {"version": 1, "x": 2}}, {"": {}}],
}


@pytest.mark.parametrize("field, value", [(f, v) for f, values in MALFORMED.items() for v in values])
def test_validate_names_each_malformed_field(field, value):
    bad = header()
    bad[field] = value  # (None included: a present field with a null value is malformed, not missing)
    with pytest.raises(ArtifactError, match=f"^f: manifest field '{field}' must be .*; the file was tampered with"):
        validate(bad, "f")


def test_a_real_saved_manifest_validates(tmp_path):
    import slimtorch as st
    from slimtorch.io.load import read_manifest

    path = st.save(nn.Sequential(nn.Linear(4, 4), Skip(), nn.Linear(4, 2)), tmp_path / "m")
    saved = read_manifest(path)
    assert validate(copy.deepcopy(saved), "m") == saved
    assert saved["version"] == manifest.VERSION and saved["format"] == manifest.FORMAT
    assert saved["modules"]["1"] == describe(Skip()) and saved["modules"]["0"] == describe(nn.Linear(4, 4))
