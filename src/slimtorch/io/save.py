"""``slimtorch.save``: weights as safetensors with the JSON manifest in its header, written atomically."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from slimtorch._version import __version__
from slimtorch.errors import ArtifactError
from slimtorch.io import architecture, manifest, sparse_storage
from slimtorch.io.atomic import publish, temporary_sibling

SUFFIX = ".safetensors"
#: suffixes of a sparse tensor's parts: its positions (per form of ``sparse_storage``) and its non-zero values
SPARSE_WHERE = {"bits": "::bits", "index": "::index"}
SPARSE_VALUES = "::values"


def artifact_path(path: str | os.PathLike) -> Path:
    """The file a model saved at ``path`` lives in: ``path`` itself if it ends in .safetensors, else path + it."""
    p = Path(path)
    return p if p.suffix == SUFFIX else p.with_name(p.name + SUFFIX)


def digest(tensors: dict[str, torch.Tensor], signed: dict[str, Any] | None = None) -> str:
    """SHA-256 of every tensor's name, dtype, shape and bytes, in name order, and of the manifest fields in
    ``signed`` (manifest v3 on; JSON with sorted keys), so that any change to the file is detected."""
    h = hashlib.sha256()
    if signed is not None:
        h.update(json.dumps(signed, sort_keys=True).encode())
    for name in sorted(tensors):
        t = tensors[name]
        h.update(f"{name}|{t.dtype}|{list(t.shape)}".encode())
        if t.numel():
            h.update(t.contiguous().reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def _versions(state: dict[str, torch.Tensor]) -> dict[str, dict[str, int]]:
    """The module versions of a state dict (its ``_metadata``: module name -> ``{"version": int}``), which some
    modules' ``_load_from_state_dict`` read (torchvision's MNASNet requires them)."""
    return {prefix: {"version": entry["version"]} for prefix, entry in getattr(state, "_metadata", {}).items()
            if isinstance(entry.get("version"), int) and not isinstance(entry["version"], bool)}


def save(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    sparse: bool = True,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Save a (compressed) model as one safetensors file whose header holds the manifest.

    Every module of a tracked type is recorded with its constructor arguments, so ``slimtorch.load`` can
    rebuild pruned, decomposed and quantized layers on top of the original architecture; the whole module tree
    (every module's name and class) is recorded too, so that ``slimtorch.load`` refuses another architecture.
    Tensors that are mostly zeros are stored as a bitmask or positions plus values. A SHA-256 checksum covers
    the tensors and the manifest. Module versions (the state dict's ``_metadata``) are recorded too. The file is
    written to a temporary name and renamed, so a crash never leaves a half-written artifact.

    Args:
        model: the model to save; it is not changed.
        path: the file (``.safetensors`` is appended when missing).
        sparse: store sparse tensors compactly (bitmask + non-zero values).
        extra: JSON-able information stored in the manifest (a recipe, metrics).

    Returns:
        The path of the written file.

    Example:
        >>> import slimtorch as st, torch
        >>> st.save(torch.nn.Linear(4, 2), "/tmp/lin")
        PosixPath('/tmp/lin.safetensors')
    """
    target = artifact_path(path)
    modules = {}
    attrs = {}
    for name, module in model.named_modules():
        entry = manifest.describe(module)
        if entry is not None:
            modules[name] = entry
        if module.__dict__.get("_slim_attrs"):
            attrs[name] = module.__dict__["_slim_attrs"]

    tensors: dict[str, torch.Tensor] = {}
    tied: dict[str, str] = {}
    sparse_names: dict[str, list[int]] = {}
    seen: dict[tuple, str] = {}
    state = model.state_dict(keep_vars=False)
    for name, t in state.items():
        if t is None:
            continue
        if t.is_quantized:
            raise ArtifactError(
                f"tensor {name!r} is a torch quantized tensor; convert the model with slimtorch.quantize "
                "(which stores plain integer tensors) before saving"
            )
        t = t.detach().cpu()
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), tuple(t.stride()), t.dtype)
        if t.numel() and key in seen:
            tied[name] = seen[key]
            continue
        seen[key] = name
        form = sparse_storage.choose(t) if sparse else None
        if form is not None:
            where, values = sparse_storage.encode(t, form)
            tensors[name + SPARSE_WHERE[form]] = where
            tensors[name + SPARSE_VALUES] = values
            sparse_names[name] = {"shape": list(t.shape), "form": form}
        else:
            tensors[name] = t.contiguous().clone()


    header = {
        "format": manifest.FORMAT,
        "version": manifest.VERSION,
        "slimtorch_version": __version__,
        "training": model.training,
        "modules": modules,
        "attrs": attrs,
        "tied": tied,
        "sparse": sparse_names,
        "tree": architecture.module_tree(model),
        "versions": _versions(state),
        "extra": extra or {},
        "model_records": {name: record for name, (describe, _) in manifest.MODEL_RECORDS.items()
                          if (record := describe(model)) is not None},
    }
    header = json.loads(json.dumps(header))  # the manifest as load reads it back (string keys, lists), then signed
    header["sha256"] = digest(tensors, header)
    tmp = temporary_sibling(target)
    try:
        save_file(tensors, tmp, metadata={"slimtorch": json.dumps(header)})
        publish(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target
