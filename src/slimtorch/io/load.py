"""``slimtorch.load``: rebuild a saved (compressed) model on its original architecture. Never unpickles."""

from __future__ import annotations

import json
import os
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from torch import nn

from slimtorch.errors import ArtifactError
from slimtorch.io import manifest, sparse_storage
from slimtorch.io.save import SPARSE_VALUES, SPARSE_WHERE, artifact_path, digest


def read_manifest(path: str | os.PathLike) -> dict[str, Any]:
    """Return the manifest stored in a slimtorch artifact's header.

    Raises:
        ArtifactError: the file is missing, truncated, not safetensors, or not a slimtorch artifact.
    """
    header, _ = _read(path, tensors=False)
    return header


def _read(path: str | os.PathLike, tensors: bool = True) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    file = artifact_path(path)
    if not file.is_file():
        raise ArtifactError(f"no saved model at {file}: check the path (slimtorch.save writes NAME.safetensors)")
    try:
        with safe_open(str(file), framework="pt") as f:
            meta = f.metadata() or {}
            data = {k: f.get_tensor(k) for k in f.keys()} if tensors else {}
    except (SafetensorError, OSError, RuntimeError, ValueError) as err:
        raise ArtifactError(f"{file} is truncated or not a safetensors file ({err}); save the model again") from None
    if "slimtorch" not in meta:
        raise ArtifactError(f"{file} is a safetensors file but not a slimtorch artifact (no manifest in its header)")
    try:
        header = json.loads(meta["slimtorch"])
    except json.JSONDecodeError as err:
        raise ArtifactError(f"{file}: the manifest is not valid JSON ({err}); the file was tampered with") from None
    if header.get("format") != manifest.FORMAT or not isinstance(header.get("modules"), dict):
        raise ArtifactError(f"{file}: the manifest is malformed; the file was tampered with")
    if header.get("version", 0) > manifest.VERSION:
        raise ArtifactError(
            f"{file} was written by slimtorch {header.get('slimtorch_version')} (manifest v{header['version']}); "
            "upgrade slimtorch to read it"
        )
    if tensors and digest(data) != header.get("sha256"):
        raise ArtifactError(f"{file}: tensor data does not match its checksum; the file was corrupted or tampered with")
    return header, data


def _dense_state(header: dict[str, Any], data: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    state = {k: v for k, v in data.items() if not k.endswith((*SPARSE_WHERE.values(), SPARSE_VALUES))}
    for name, entry in header.get("sparse", {}).items():
        # manifest v1 recorded only the shape (bitmask form); v2 records {"shape", "form"}
        shape, form = (entry, "bits") if isinstance(entry, list) else (entry.get("shape"), entry.get("form"))
        try:
            state[name] = sparse_storage.decode(data[name + SPARSE_WHERE[form]], data[name + SPARSE_VALUES], shape,
                                                form)
        except (KeyError, ValueError, TypeError) as err:
            raise ArtifactError(f"sparse tensor {name!r} cannot be decoded ({err}); the file is corrupted") from None
    for name, source in header.get("tied", {}).items():
        if source not in state:
            raise ArtifactError(f"tensor {name!r} is tied to missing tensor {source!r}; the file is corrupted")
        state[name] = state[source]
    return state


def _replace(model: nn.Module, path: str, module: nn.Module) -> None:
    if not path:
        raise ArtifactError("the manifest replaces the root module; pass that module type as model=")
    parent_name, _, child = path.rpartition(".")
    try:
        parent = model.get_submodule(parent_name) if parent_name else model
    except AttributeError:
        raise ArtifactError(
            f"the saved model has a module at {path!r} but the architecture given has no {parent_name!r}: "
            "pass the same architecture the model was compressed from"
        ) from None
    setattr(parent, child, module)


def _fit_tensor_shapes(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Give directly-held parameters and buffers (class tokens, layer scales) the saved shapes."""
    for name, saved in state.items():
        owner_name, _, attr = name.rpartition(".")
        try:
            owner = model.get_submodule(owner_name) if owner_name else model
        except AttributeError:
            continue
        current = getattr(owner, attr, None)
        if isinstance(current, torch.Tensor) and current.shape != saved.shape:
            empty = torch.empty(saved.shape, dtype=saved.dtype)
            if isinstance(current, nn.Parameter):
                setattr(owner, attr, nn.Parameter(empty, requires_grad=current.requires_grad))
            else:
                owner.register_buffer(attr, empty)


def load(path: str | os.PathLike, model: nn.Module) -> nn.Module:
    """Load a model saved with ``slimtorch.save`` onto ``model``, its original (uncompressed) architecture.

    Modules the manifest records with another type or other constructor arguments (pruned, decomposed,
    quantized layers) are rebuilt, tracked attributes are set again, and then every weight is loaded; the
    architecture passed in is changed in place and returned. Nothing is unpickled.

    Args:
        path: the saved file (``.safetensors`` may be left off).
        model: an instance of the architecture the saved model was made from; its weights do not matter.

    Returns:
        ``model``, now identical to the saved one.

    Raises:
        ArtifactError: a missing, truncated, tampered or incompatible file, with what to do.

    Example:
        >>> import slimtorch as st, torch
        >>> path = st.save(torch.nn.Linear(4, 2), "/tmp/lin")
        >>> st.load(path, model=torch.nn.Linear(4, 2))
        Linear(in_features=4, out_features=2, bias=True)
    """
    header, data = _read(path)
    state = _dense_state(header, data)
    for mpath, entry in sorted(header["modules"].items(), key=lambda kv: kv[0].count(".") if kv[0] else -1):
        try:
            current = model.get_submodule(mpath) if mpath else model
        except AttributeError:
            current = None
        if current is not None and manifest.describe(current) == entry:
            continue
        _replace(model, mpath, manifest.build(entry, mpath))
    for mpath, attrs in header.get("attrs", {}).items():
        try:
            owner = model.get_submodule(mpath) if mpath else model
        except AttributeError:
            raise ArtifactError(f"the architecture given has no module {mpath!r} recorded in the file") from None
        for key, value in attrs.items():
            manifest.set_tracked_attr(owner, key, value)
    _fit_tensor_shapes(model, state)
    result = model.load_state_dict(state, strict=False, assign=True)
    if result.missing_keys or result.unexpected_keys:
        raise ArtifactError(
            f"the saved weights do not fit the architecture given (missing {result.missing_keys[:5]}, "
            f"unexpected {result.unexpected_keys[:5]}): pass the architecture the model was compressed from"
        )
    model.train(bool(header.get("training", False)))
    return model
