"""FORMATS / linear_class, and files written before the formats were classes (``QuantLinear`` + ``mode``)."""

import pytest
import torch
from torch import nn

import slimtorch as st
from slimtorch.errors import ArtifactError, ConfigError
from slimtorch.io import architecture, manifest
from slimtorch.io.load import read_manifest
from slimtorch.quant.formats import (
    FORMATS,
    DynamicQuantLinear,
    StaticQuantLinear,
    WeightOnlyQuantLinear,
    linear_class,
)
from slimtorch.quant.modules import QuantLinear
from slimtorch.quant.ptq import quant_linear


def test_formats_map_each_mode_to_its_class():
    assert FORMATS == {"static": StaticQuantLinear, "dynamic": DynamicQuantLinear,
                       "weight_only": WeightOnlyQuantLinear}
    for mode, cls in FORMATS.items():
        assert linear_class(mode) is cls and cls.mode == mode and issubclass(cls, QuantLinear)
        assert manifest.MODULES[cls.__name__] is cls  # saved under its own name


def test_an_unknown_mode_is_refused_naming_the_allowed_ones():
    with pytest.raises(ConfigError, match=r"mode='int8' .*allowed: 'static', 'dynamic', 'weight_only'"):
        linear_class("int8")


def _old_args(m: QuantLinear) -> dict:
    """The manifest arguments slimtorch wrote for a ``QuantLinear`` before the formats were classes: ``mode``
    and every format's arguments, whichever the mode."""
    return {"in_features": m.in_features, "out_features": m.out_features, "bias": m.bias is not None,
            "mode": m.mode, "bits": m.bits, "group_size": m.group_size, "relu": getattr(m, "relu", False),
            "per_token": getattr(m, "per_token", True), "input_bits": getattr(m, "input_bits", 8)}


def _model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 48), nn.ReLU(), nn.Linear(48, 32), nn.Linear(32, 32), nn.Linear(32, 16),
                         nn.Linear(16, 8)).eval()


def _one_of_each(model: nn.Sequential, x: torch.Tensor) -> nn.Sequential:
    """Layers 0, 2, 3, 4, 5: static (ReLU fused), per-token dynamic, per-tensor dynamic, int4 in groups of 16,
    int8 weight-only."""
    st.quantize(model, st.StaticQuant(calibration_batches=1), data=[x], select=["0"])
    st.quantize(model, st.DynamicQuant(), select=["2"])
    st.quantize(model, st.DynamicQuant(activations="tensor"), select=["3"])
    st.quantize(model, st.WeightOnlyQuant(bits=4, group_size=16), select=["4"])
    st.quantize(model, st.WeightOnlyQuant(bits=8, group_size=None), select=["5"])
    return model


def test_a_file_written_with_quant_linear_and_mode_loads_into_each_format(tmp_path, monkeypatch):
    x = torch.randn(9, 64)
    model = _one_of_each(_model(), x)
    want_types = [StaticQuantLinear, nn.Identity, DynamicQuantLinear, DynamicQuantLinear, WeightOnlyQuantLinear,
                  WeightOnlyQuantLinear]
    assert [type(m) for m in model] == want_types and model[0].relu
    # write the file as slimtorch did before: type "QuantLinear" with the old arguments, in the manifest and tree
    describe, class_name = manifest.describe, architecture.class_name
    monkeypatch.setattr(manifest, "describe", lambda m: {"type": "QuantLinear", "args": _old_args(m)}
                        if isinstance(m, QuantLinear) else describe(m))
    monkeypatch.setattr(architecture, "class_name", lambda cls: "slimtorch.quant.modules.QuantLinear"
                        if issubclass(cls, QuantLinear) else class_name(cls))
    path = st.save(model, tmp_path / "old")
    monkeypatch.undo()
    entries = read_manifest(path)["modules"]
    assert entries["2"] == {"type": "QuantLinear", "args": _old_args(model[2])} and entries["2"]["args"]["mode"]

    loaded = st.load(path, _model())
    assert [type(m) for m in loaded] == want_types
    for old, new in zip(model, loaded, strict=True):
        if isinstance(old, QuantLinear):
            assert new.manifest_args() == old.manifest_args() and new.mode == old.mode
    assert loaded[3].per_token is False and loaded[0].relu and loaded[4].qweight.dtype == torch.uint8
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    # saved again, the layers are recorded under their own names
    assert read_manifest(st.save(loaded, tmp_path / "new"))["modules"]["2"]["type"] == "DynamicQuantLinear"


def test_an_old_entry_builds_the_format_its_mode_names():
    layer = quant_linear(nn.Linear(40, 24), mode="weight_only", bits=4, group_size=8)
    built = manifest.build({"type": "QuantLinear", "args": _old_args(layer)}, "fc")
    assert type(built) is WeightOnlyQuantLinear and built.manifest_args() == layer.manifest_args()
    assert {k: (v.shape, v.dtype) for k, v in built.state_dict().items()} == {
        k: (v.shape, v.dtype) for k, v in layer.state_dict().items()}
    # files of every version wrote mode; the old constructor's default was "static"
    args = {k: v for k, v in _old_args(layer).items() if k != "mode"}
    assert type(manifest.build({"type": "QuantLinear", "args": {**args, "bits": 8}}, "fc")) is StaticQuantLinear
    with pytest.raises(ArtifactError, match=r"mode 'int8' is not a quantized Linear format"):
        manifest.build({"type": "QuantLinear", "args": {**args, "mode": "int8"}}, "fc")
