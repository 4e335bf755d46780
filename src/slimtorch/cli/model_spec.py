"""Resolve the MODEL argument of the CLI: ``zoo:NAME``, ``module.path:factory`` (with optional weights),
or a Hugging Face model directory on disk."""

from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from slimtorch.errors import ConfigError, DataError


@dataclass
class Resolved:
    """A model from the command line, with the data and example inputs it brings (zoo models bring both)."""

    model: nn.Module
    build: Any  # a zero-argument callable giving a fresh architecture (for slimtorch.load)
    data: Any = None
    example_inputs: Any = None
    name: str = ""


def _import_attr(spec: str, what: str) -> Any:
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ConfigError(f"{what} {spec!r} must look like 'package.module:function'")
    if "" not in sys.path and "." not in sys.path:
        sys.path.insert(0, ".")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ConfigError(f"{what} {spec!r}: cannot import module {module_name!r} ({err})") from None
    if not hasattr(module, attr):
        raise ConfigError(f"{what} {spec!r}: module {module_name!r} has no attribute {attr!r}")
    return getattr(module, attr)


def load_state_file(path: Path) -> dict[str, torch.Tensor]:
    """Read a state dict from a .safetensors file or a weights-only torch file (never unpickling objects)."""
    if not path.is_file():
        raise DataError(f"weights file {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise DataError(
            f"{path} is not a weights-only torch file ({err}); save a state_dict or use safetensors"
        ) from None
    if not isinstance(state, dict):
        raise DataError(f"{path} does not hold a state dict")
    return state


def resolve_model(spec: str, weights: str | None = None) -> Resolved:
    """Turn a CLI model spec into a model.

    Raises:
        ConfigError: a malformed spec, an unknown zoo name or an import failure, with the fix.
    """
    if spec.startswith("zoo:"):
        from slimtorch import zoo

        name = spec[4:]
        model, zoo_data = zoo.load(name)
        return Resolved(model, lambda: zoo.build(name), zoo_data, zoo_data.example_inputs(1), name)
    path = Path(spec)
    if path.is_dir() and (path / "config.json").is_file():
        return _hf_directory(path)
    if ":" not in spec:
        raise ConfigError(
            f"model {spec!r} is not understood: use zoo:NAME, package.module:factory, or a Hugging Face model folder"
        )
    factory = _import_attr(spec, "model")
    model = factory()
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model factory {spec!r} returned {type(model).__name__}, not an nn.Module")
    if weights:
        state = load_state_file(Path(weights))
        try:
            model.load_state_dict(state)
        except RuntimeError as err:
            raise DataError(f"weights {weights} do not fit {spec}: {str(err).splitlines()[0]}") from None
    return Resolved(model.eval(), factory, name=spec.rpartition(":")[2])


def _hf_directory(path: Path) -> Resolved:
    try:
        from transformers import AutoModelForSequenceClassification
    except ImportError:
        raise ConfigError("a Hugging Face model folder needs the 'hf' extra: pip install 'slimtorch[hf]'") from None
    model = AutoModelForSequenceClassification.from_pretrained(str(path), local_files_only=True, use_safetensors=True)

    def build() -> nn.Module:
        return AutoModelForSequenceClassification.from_pretrained(str(path), local_files_only=True,
                                                                  use_safetensors=True)

    example = {"input_ids": torch.ones(1, 16, dtype=torch.long), "attention_mask": torch.ones(1, 16, dtype=torch.long)}
    return Resolved(model.eval(), build, None, example, path.name)


def parse_shape(text: str) -> tuple[int, ...]:
    """``"1,3,224,224"`` -> ``(1, 3, 224, 224)``."""
    try:
        shape = tuple(int(v) for v in text.replace("x", ",").split(",") if v)
    except ValueError:
        raise ConfigError(f"--input-shape {text!r} must be comma-separated integers like 1,3,224,224") from None
    if not shape or any(v <= 0 for v in shape):
        raise ConfigError(f"--input-shape {text!r} must be positive integers like 1,3,224,224")
    return shape


def example_inputs(resolved: Resolved, input_shape: str | None, batch_size: int | None, spec: str) -> Any:
    """The CLI's example inputs: random data of ``--input-shape``, else a batch of the model's zoo data, else the
    example the model spec carries (Hugging Face folders).

    Raises:
        ConfigError: none of these is available (the message asks for ``--input-shape``).
    """
    if input_shape:
        return torch.randn(parse_shape(input_shape))
    if resolved.data is not None:
        return resolved.data.example_inputs(batch_size or 1)
    if resolved.example_inputs is not None:
        return resolved.example_inputs
    raise ConfigError(f"{spec} needs --input-shape (e.g. --input-shape 1,3,224,224)")
