"""The versioned JSON manifest: which module sits at each path, with its constructor arguments.

``slimtorch.save`` records every module of a known type (plain torch layers and every compressed module
class that registered itself with :func:`register_module`), so that ``slimtorch.load`` can rebuild a pruned,
decomposed or quantized model on top of the original architecture. Only names from these two tables are
ever constructed: a manifest cannot make slimtorch import or run anything else.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from slimtorch.errors import ArtifactError
from slimtorch.io.sparse_storage import FORMS

FORMAT = "slimtorch"
#: 2: sparse tensors record their form ("bits" or "index"); 3: the module tree (``tree``) is recorded and the
#: checksum covers the manifest too. Files of every earlier version still load. Optional fields (``versions``:
#: the state dict's module versions) may be missing from any version.
VERSION = 3

#: registered compressed module classes, by class name
MODULES: dict[str, type[nn.Module]] = {}


def register_module(cls: type[nn.Module]) -> type[nn.Module]:
    """Class decorator for compressed modules: ``cls(**module.manifest_args())`` must rebuild an empty twin
    (same buffers and parameters, same shapes and dtypes) that ``load_state_dict`` then fills. A class may
    define a classmethod ``from_manifest(**args)`` that :func:`build` calls instead of the constructor (to read
    entries written by earlier versions, which described it differently)."""
    if not callable(getattr(cls, "manifest_args", None)):
        raise TypeError(f"{cls.__name__} must define manifest_args() -> dict of JSON constructor arguments")
    MODULES[cls.__name__] = cls
    return cls


#: name -> (describe(model) -> JSON object or None, restore(model, record)): records of a whole model kept by a
#: family above io (quant.lower: which modules run a lowered int8 graph); ``save`` writes what ``describe``
#: returns under ``model_records``, ``load`` hands it back to ``restore`` once the weights are in
MODEL_RECORDS: dict[str, tuple[Callable[[nn.Module], dict | None], Callable[[nn.Module, dict], None]]] = {}


def register_model_record(name: str, describe: Callable[[nn.Module], dict | None],
                          restore: Callable[[nn.Module, dict], None]) -> None:
    """Register a whole-model record (see :data:`MODEL_RECORDS`)."""
    MODEL_RECORDS[name] = (describe, restore)


def _conv_args(m: nn.Module) -> dict[str, Any]:
    return {
        "in_channels": m.in_channels,
        "out_channels": m.out_channels,
        "kernel_size": list(m.kernel_size),
        "stride": list(m.stride),
        "padding": m.padding if isinstance(m.padding, str) else list(m.padding),
        "dilation": list(m.dilation),
        "groups": m.groups,
        "bias": m.bias is not None,
        "padding_mode": m.padding_mode,
    }


def _bn_args(m: nn.Module) -> dict[str, Any]:
    return {
        "num_features": m.num_features,
        "eps": m.eps,
        "momentum": m.momentum,
        "affine": m.affine,
        "track_running_stats": m.track_running_stats,
    }


def _mha_args(m: nn.MultiheadAttention) -> dict[str, Any]:
    return {
        "embed_dim": m.embed_dim,
        "num_heads": m.num_heads,
        "dropout": m.dropout,
        "bias": m.in_proj_bias is not None,
        "add_bias_kv": m.bias_k is not None,
        "kdim": m.kdim,
        "vdim": m.vdim,
        "batch_first": m.batch_first,
        **_set_only(m, {"add_zero_attn": False}),
    }


def _set_only(m: nn.Module, defaults: dict[str, Any]) -> dict[str, Any]:
    """Constructor arguments that change the forward, recorded only where they differ from the default: the
    description of a layer that leaves them alone stays what files written before they were recorded hold."""
    return {k: getattr(m, k) for k, default in defaults.items() if getattr(m, k) != default}


#: plain torch layers whose shape slimtorch may change: class -> constructor-argument reader
TORCH_MODULES: dict[type[nn.Module], Callable[[nn.Module], dict[str, Any]]] = {
    nn.Linear: lambda m: {"in_features": m.in_features, "out_features": m.out_features, "bias": m.bias is not None},
    nn.Conv1d: _conv_args,
    nn.Conv2d: _conv_args,
    nn.ConvTranspose2d: lambda m: {**_conv_args(m), "output_padding": list(m.output_padding)},
    nn.BatchNorm1d: _bn_args,
    nn.BatchNorm2d: _bn_args,
    nn.LayerNorm: lambda m: {
        "normalized_shape": list(m.normalized_shape),
        "eps": m.eps,
        "elementwise_affine": m.elementwise_affine,
        "bias": getattr(m, "bias", None) is not None,
    },
    nn.GroupNorm: lambda m: {
        "num_groups": m.num_groups,
        "num_channels": m.num_channels,
        "eps": m.eps,
        "affine": m.affine,
    },
    nn.Embedding: lambda m: {
        "num_embeddings": m.num_embeddings,
        "embedding_dim": m.embedding_dim,
        "padding_idx": m.padding_idx,
        **_set_only(m, {"max_norm": None, "norm_type": 2.0, "scale_grad_by_freq": False, "sparse": False}),
    },
    nn.MultiheadAttention: _mha_args,
    nn.Identity: lambda m: {},
}
_TORCH_BY_NAME = {f"torch.nn.{cls.__name__}": cls for cls in TORCH_MODULES}


def describe(module: nn.Module) -> dict[str, Any] | None:
    """The manifest entry ``{"type", "args"}`` of a module, or None if slimtorch does not track its type."""
    cls = type(module)
    if cls in TORCH_MODULES:
        return {"type": f"torch.nn.{cls.__name__}", "args": TORCH_MODULES[cls](module)}
    if MODULES.get(cls.__name__) is cls:
        return {"type": cls.__name__, "args": module.manifest_args()}
    return None


def build(entry: dict[str, Any], path: str) -> nn.Module:
    """Construct the (empty) module a manifest entry describes.

    Raises:
        ArtifactError: the type is neither a tracked torch layer nor a registered slimtorch module, or its
            arguments do not fit the constructor.
    """
    name = entry.get("type")
    if name in _TORCH_BY_NAME:
        cls = _TORCH_BY_NAME[name]
    elif name in MODULES:
        cls = MODULES[name]
    else:
        raise ArtifactError(
            f"module {path!r} has type {name!r}, which this slimtorch does not know; "
            "the file is from a newer slimtorch or was tampered with"
        )
    args = dict(entry.get("args", {}))
    for key in ("kernel_size", "stride", "dilation", "output_padding"):
        if isinstance(args.get(key), list):
            args[key] = tuple(args[key])
    if isinstance(args.get("padding"), list):
        args["padding"] = tuple(args["padding"])
    try:
        return getattr(cls, "from_manifest", cls)(**args)
    except Exception as err:  # noqa: BLE001 - arguments read from a file: any failure of the constructor is the file's
        raise ArtifactError(f"cannot rebuild module {path!r} ({name}) from the manifest: {err}") from None


def set_tracked_attr(module: nn.Module, name: str, value: int | float | str | bool | list) -> None:
    """Set a plain attribute of a user module (e.g. ``num_heads`` after head pruning) and record it, so that
    ``slimtorch.load`` sets it again on the original architecture. A dotted ``holder.field`` sets a field of a
    plain object the module holds (``config.hidden_size`` of a Hugging Face model's config)."""
    holder, dot, field = name.partition(".")
    setattr(getattr(module, holder) if dot else module, field if dot else name, value)
    tracked = module.__dict__.setdefault("_slim_attrs", {})
    tracked[name] = value


def _shape(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in value)


def _module_entry(value: Any) -> bool:
    return isinstance(value, dict) and isinstance(value.get("type"), str) and isinstance(value.get("args", {}), dict)


def _sparse_entry(value: Any) -> bool:
    # v1 recorded only the shape (bitmask form)
    return _shape(value) or (isinstance(value, dict) and _shape(value.get("shape")) and value.get("form") in FORMS)


def _tree(value: Any) -> bool:
    if not isinstance(value, dict) or not isinstance(value.get("types"), list) or not isinstance(
            value.get("modules"), list) or not all(isinstance(t, str) for t in value["types"]):
        return False
    rows, count = value["modules"], len(value["types"])
    well_formed = all(isinstance(r, list) and len(r) == 2 and isinstance(r[0], str) and isinstance(r[1], int)
                      and not isinstance(r[1], bool) and 0 <= r[1] < count for r in rows)
    return well_formed and len({r[0] for r in rows}) == len(rows)


def _version_entry(value: Any) -> bool:
    return (isinstance(value, dict) and set(value) == {"version"} and isinstance(value["version"], int)
            and not isinstance(value["version"], bool))


def _dict_of(check: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda value: isinstance(value, dict) and all(check(v) for v in value.values())


_ATTR_VALUE = (bool, int, float, str, list, type(None))

#: field -> (first manifest version that requires it, check of its value, what the value must be)
FIELDS: dict[str, tuple[int | None, Callable[[Any], bool], str]] = {
    "modules": (1, _dict_of(_module_entry), 'an object of module name -> {"type": str, "args": object}'),
    "attrs": (None, _dict_of(_dict_of(lambda v: isinstance(v, _ATTR_VALUE))), "an object of objects of JSON values"),
    "tied": (None, _dict_of(lambda v: isinstance(v, str)), "an object of tensor name -> tensor name"),
    "sparse": (None, _dict_of(_sparse_entry), f'an object of name -> {{"shape": [int], "form": one of {FORMS}}}'),
    "training": (None, lambda v: isinstance(v, bool), "true or false"),
    "sha256": (None, lambda v: isinstance(v, str), "a hex string"),
    "tree": (3, _tree, 'an object {"types": [str], "modules": [[unique name, index into types]]}'),
    "extra": (None, lambda v: isinstance(v, dict), "an object"),
    "versions": (None, _dict_of(_version_entry), 'an object of module name -> {"version": int}'),
    "model_records": (None, _dict_of(lambda v: isinstance(v, dict)), "an object of record name -> object"),
}


def validate(header: Any, file: str) -> dict[str, Any]:
    """Check the structure of a manifest read from ``file`` (every field slimtorch reads has the right type).

    Returns:
        ``header``, now known to be well-formed.

    Raises:
        ArtifactError: the manifest is not a slimtorch manifest, is from a newer slimtorch, or has a missing
            or malformed field (named in the message).
    """
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise ArtifactError(f"{file}: the manifest is malformed (not a slimtorch manifest); the file was tampered with")
    version = header.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ArtifactError(f"{file}: manifest field 'version' is {version!r}, not a positive integer; the file was "
                            "tampered with, save the model again")
    if version > VERSION:
        raise ArtifactError(f"{file} was written by slimtorch {header.get('slimtorch_version')} (manifest "
                            f"v{version}); upgrade slimtorch to read it")
    for field, (since, check, what) in FIELDS.items():
        if field not in header:
            if since is not None and version >= since:
                raise ArtifactError(f"{file}: the manifest (v{version}) has no field {field!r}; the file was "
                                    "tampered with, save the model again")
        elif not check(header[field]):
            raise ArtifactError(f"{file}: manifest field {field!r} must be {what}; the file was tampered with, "
                                "save the model again")
    return header
