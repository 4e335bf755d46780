"""``slimtorch.load``: rebuild a saved (compressed) model on its original architecture. Never unpickles.

Before a weight is loaded, the file is checked: its structure (:func:`slimtorch.io.manifest.validate`), its
checksum, the model's module tree against the saved one and every tensor's name and shape
(:mod:`slimtorch.io.architecture`). Every failure is an :class:`~slimtorch.ArtifactError` naming what is wrong.
"""

from __future__ import annotations

import bisect
import itertools
import json
import math
import os
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from torch import nn
from torch.nn.parameter import is_lazy

from slimtorch._log import logger
from slimtorch.errors import ArtifactError
from slimtorch.io import architecture, manifest, sparse_storage
from slimtorch.io.save import SPARSE_VALUES, SPARSE_WHERE, artifact_path, digest

#: manifest types that stand in for whatever module the original had at their name
_IDENTITY = "torch.nn.Identity"
#: slack (bytes) above the original module's size that a module rebuilt from the manifest may take
_REBUILD_SLACK = 1 << 20
#: values a recorded attribute of a held object (``config.hidden_size``) may have and take
_PLAIN = (bool, int, float, str)


def read_manifest(path: str | os.PathLike) -> dict[str, Any]:
    """Return the manifest stored in a slimtorch artifact's header (its structure checked, not its checksum).

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
    except (SafetensorError, OSError, RuntimeError, ValueError, TypeError) as err:
        raise ArtifactError(f"{file} is truncated or not a safetensors file ({err}); save the model again") from None
    if "slimtorch" not in meta:
        raise ArtifactError(f"{file} is a safetensors file but not a slimtorch artifact (no manifest in its header)")
    try:
        header = json.loads(meta["slimtorch"])
    except (ValueError, RecursionError) as err:
        raise ArtifactError(f"{file}: the manifest is not valid JSON ({err}); the file was tampered with") from None
    header = manifest.validate(header, str(file))
    if tensors:
        signed = {k: v for k, v in header.items() if k != "sha256"} if header["version"] >= 3 else None
        if digest(data, signed) != header.get("sha256"):
            raise ArtifactError(f"{file}: tensor data or manifest does not match its checksum; the file was corrupted "
                                "or tampered with, save the model again")
    return header, data


def _sparse_entries(header: dict[str, Any]) -> dict[str, tuple[list[int], str]]:
    # manifest v1 recorded only the shape (bitmask form); v2 records {"shape", "form"}
    return {name: (entry, "bits") if isinstance(entry, list) else (entry["shape"], entry["form"])
            for name, entry in header.get("sparse", {}).items()}


def _saved_shapes(header: dict[str, Any], data: dict[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    """Every tensor the file holds, by its name in the state dict: dense, sparse (decoded shape) and tied."""
    shapes: dict[str, tuple[int, ...]] = {}
    parts = set()
    for name, (shape, form) in _sparse_entries(header).items():
        for key in (name + SPARSE_WHERE[form], name + SPARSE_VALUES):
            if key not in data:
                raise ArtifactError(f"sparse tensor {name!r} has no part {key!r} in the file; the file is corrupted")
            parts.add(key)
        shapes[name] = tuple(shape)
    for name, t in data.items():
        if name in shapes:
            raise ArtifactError(f"tensor {name!r} is stored both dense and sparse; the file is corrupted")
        if name not in parts:
            shapes[name] = tuple(t.shape)
    for name, source in header.get("tied", {}).items():
        if name in shapes or source not in shapes:
            raise ArtifactError(f"tensor {name!r} is tied to {source!r}, which the file does not hold (or it holds "
                                f"{name!r} itself); the file is corrupted")
        shapes[name] = shapes[source]
    return shapes


def _dense_state(header: dict[str, Any], data: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    parts = {name + suffix for name, (_, form) in _sparse_entries(header).items()
             for suffix in (SPARSE_WHERE[form], SPARSE_VALUES)}
    state = {k: v for k, v in data.items() if k not in parts}
    for name, (shape, form) in _sparse_entries(header).items():
        try:
            state[name] = sparse_storage.decode(data[name + SPARSE_WHERE[form]], data[name + SPARSE_VALUES], shape,
                                                form)
        except (KeyError, ValueError, TypeError, RuntimeError) as err:
            raise ArtifactError(f"sparse tensor {name!r} cannot be decoded ({err}); the file is corrupted") from None
    for name, source in header.get("tied", {}).items():
        if source not in state:
            raise ArtifactError(f"tensor {name!r} is tied to missing tensor {source!r}; the file is corrupted")
        state[name] = state[source]
    return state


def _bytes(tensors: Any) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if isinstance(t, torch.Tensor) and not is_lazy(t))


def _check_size(entry: dict[str, Any], path: str, current: nn.Module, budget: int) -> None:
    """Refuse to build a module the manifest makes far larger than the model's and the file's tensors there
    (a tampered size would otherwise allocate without bound). The module is first built on the meta device;
    a class that cannot be counts one byte per element of the product of its integer arguments."""
    limit = budget + _bytes(current.state_dict().values()) + _REBUILD_SLACK
    try:
        with torch.device("meta"):
            probe = manifest.build(entry, path)
        size = _bytes(probe.state_dict().values())
    except (ArtifactError, NotImplementedError, RuntimeError):
        ints = [v for v in entry.get("args", {}).values() if isinstance(v, int) and not isinstance(v, bool) and v > 0]
        size = math.prod(ints)
    if size > limit:
        raise ArtifactError(f"module {path!r} ({entry['type']}) would take {size} bytes rebuilt from the manifest, "
                            f"more than the model's module and the file's tensors there ({limit}); the file is "
                            "corrupted or the model is not the saved architecture")


def _file_bytes_under(data: dict[str, torch.Tensor]) -> Callable[[str], int]:
    """A lookup of the bytes of the file's tensors below a module name ("" = all), by binary search in the
    sorted tensor names: those below ``m`` are the names in [``m.``, ``m/``), "/" being the character after "."."""
    names = sorted(data)
    total = list(itertools.accumulate((data[n].numel() * data[n].element_size() for n in names), initial=0))

    def below(module: str) -> int:
        if not module:
            return total[-1]
        return total[bisect.bisect_left(names, module + "/")] - total[bisect.bisect_left(names, module + ".")]

    return below


def _rebuild(model: nn.Module, modules: dict[str, dict[str, Any]], file_bytes: Callable[[str], int]) -> None:
    """Replace every module the manifest describes differently (parents before children)."""
    for mpath, entry in sorted(modules.items(), key=lambda kv: kv[0].count(".") if kv[0] else -1):
        try:
            current = model.get_submodule(mpath) if mpath else model
        except AttributeError:
            raise ArtifactError(f"the saved model has a module {mpath!r} ({entry['type']}) but the model given has "
                                f"none there; {architecture.FIX}") from None
        if manifest.describe(current) == entry:
            continue
        if not mpath:
            raise ArtifactError(f"the manifest replaces the root module by {entry['type']}; pass that module type "
                                "as model=")
        _check_size(entry, mpath, current, file_bytes(mpath))
        model.set_submodule(mpath, manifest.build(entry, mpath))


def _plain_attribute(module: nn.Module, key: str) -> bool:
    """Whether ``key`` names a plain data attribute of ``module`` (its own, or a class-level default such as
    ``same_pad = False``): never a parameter, buffer, submodule, method, property or private name. A dotted
    ``holder.field`` names a plain ``bool``/``int``/``float``/``str`` field of a plain object the module holds
    (a Hugging Face ``config``)."""
    holder, dot, field = key.partition(".")
    if dot:
        obj = vars(module).get(holder)
        if (holder.startswith("_") or field.startswith("_") or "." in field or obj is None or callable(obj)
                or isinstance(obj, (nn.Module, torch.Tensor, *_PLAIN))):
            return False
        return field in getattr(obj, "__dict__", {}) and isinstance(vars(obj)[field], _PLAIN)
    if key.startswith("_") or key == "training" or any(key in d for d in (module._parameters, module._buffers,
                                                                           module._modules)):
        return False
    return key in vars(module) or isinstance(getattr(type(module), key, None), bool | int | float | str | list | tuple)


def _set_attrs(model: nn.Module, attrs: dict[str, dict[str, Any]]) -> None:
    """Set the plain attributes slimtorch changed (head counts after head pruning) again."""
    for mpath, values in attrs.items():
        try:
            owner = model.get_submodule(mpath) if mpath else model
        except AttributeError:
            raise ArtifactError(f"the architecture given has no module {mpath!r} recorded in the file; "
                                f"{architecture.FIX}") from None
        for key, value in values.items():
            if not _plain_attribute(owner, key) or ("." in key and not isinstance(value, _PLAIN)):
                raise ArtifactError(f"the file sets attribute {key!r} of module {mpath!r} ({type(owner).__name__}), "
                                    f"which has no such plain attribute; {architecture.FIX}")
            manifest.set_tracked_attr(owner, key, value)


def _fit_tensor_shapes(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Give directly-held parameters and buffers (class tokens, layer scales) the saved shapes."""
    for name, saved in state.items():
        owner_name, _, attr = name.rpartition(".")
        owner = model.get_submodule(owner_name) if owner_name else model
        current = getattr(owner, attr, None)
        if isinstance(current, torch.Tensor) and current.shape != saved.shape:
            empty = torch.empty(saved.shape, dtype=saved.dtype)
            if isinstance(current, nn.Parameter):
                setattr(owner, attr, nn.Parameter(empty, requires_grad=current.requires_grad))
            else:
                owner.register_buffer(attr, empty)


def _fresh_copies(state: dict[str, torch.Tensor], versions: dict[str, dict[str, int]] | None) -> OrderedDict:
    """The state dict to load: every tensor copied into its own storage (tensors read from the file sit at
    unaligned addresses inside its buffer, where oneDNN/MKL kernels round differently: outputs would not be
    bit-exact), tied tensors still one tensor, with the saved module versions as ``_metadata`` (modules such as
    torchvision's MNASNet read them)."""
    copies: dict[int, torch.Tensor] = {}
    fresh = OrderedDict()
    for name, t in state.items():
        if id(t) not in copies:
            copies[id(t)] = t.clone(memory_format=torch.contiguous_format)
        fresh[name] = copies[id(t)]
    if versions is not None:
        fresh._metadata = OrderedDict((prefix, dict(entry)) for prefix, entry in versions.items())
    return fresh


def load(path: str | os.PathLike, model: nn.Module) -> nn.Module:
    """Load a model saved with ``slimtorch.save`` onto ``model``, its original (uncompressed) architecture.

    The model's module tree must be the saved one up to the changes slimtorch makes (modules replaced by
    slimtorch layers or ``nn.Identity``, blocks removed by layer pruning, pruned widths), and every saved tensor
    must have a place in it. Modules the manifest records with another type or other constructor arguments are
    then rebuilt, tracked attributes are set again, and every weight is loaded; the architecture passed in is
    changed in place and returned. Nothing is unpickled. After an ``ArtifactError`` raised once rebuilding
    started, the model passed in may be partly changed: build a fresh one.

    Args:
        path: the saved file (``.safetensors`` may be left off).
        model: an instance of the architecture the saved model was made from; its weights do not matter.

    Returns:
        ``model``, now identical to the saved one.

    Raises:
        ArtifactError: a missing, truncated, tampered or incompatible file, or a model of another architecture,
            with what to do.

    Example:
        >>> import slimtorch as st, torch
        >>> path = st.save(torch.nn.Linear(4, 2), "/tmp/lin")
        >>> st.load(path, model=torch.nn.Linear(4, 2))
        Linear(in_features=4, out_features=2, bias=True)
    """
    header, data = _read(path)
    saved = _saved_shapes(header, data)
    modules = header["modules"]
    if "tree" in header:
        tree_names = {row[0] for row in header["tree"]["modules"]}
        stray = sorted(set(modules) - tree_names)
        if stray:
            raise ArtifactError(f"the manifest describes module {stray[0]!r}, which its module tree lacks; the file "
                                "is corrupted, save the model again")
        replaced = {p for p, e in modules.items() if e["type"] in manifest.MODULES or e["type"] == _IDENTITY}
        architecture.check_tree(header["tree"], model, replaced)
    else:
        logger.info("%s: manifest v%d records no module tree; the architecture is checked by tensor names and shapes "
                    "only", artifact_path(path), header["version"])
    before = architecture.tensor_shapes(model)
    classes = {name: type(m) for name, m in model.named_modules()}
    _rebuild(model, modules, _file_bytes_under(data))
    _set_attrs(model, header.get("attrs", {}))
    kept = {name for name, m in model.named_modules() if classes.get(name) is type(m)}
    architecture.check_tensors(saved, model, before, kept, set(modules))
    state = _fresh_copies(_dense_state(header, data), header.get("versions"))
    _fit_tensor_shapes(model, state)
    try:
        result = model.load_state_dict(state, strict=False, assign=True)
    except RuntimeError as err:
        raise ArtifactError(f"the saved weights do not load into the model ({err}); {architecture.FIX}") from None
    if result.missing_keys or result.unexpected_keys:
        raise ArtifactError(
            f"the saved weights do not fit the architecture given (missing {result.missing_keys[:5]}, "
            f"unexpected {result.unexpected_keys[:5]}); {architecture.FIX}"
        )
    model.train(header.get("training", False))
    for name, record in header.get("model_records", {}).items():
        if name not in manifest.MODEL_RECORDS:
            raise ArtifactError(f"the file holds a {name!r} record this slimtorch does not know; upgrade slimtorch")
        manifest.MODEL_RECORDS[name][1](model, record)
    return model
