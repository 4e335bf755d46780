"""Resolve the MODEL argument of the CLI: ``zoo:NAME``, ``module.path:factory`` (with optional weights),
or a Hugging Face model directory on disk."""

from __future__ import annotations

import importlib
import json
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


def check_import_spec(spec: str, what: str) -> str:
    """Check that ``spec`` looks like ``package.module:function`` (Python names on both sides); returns it.

    Raises:
        ConfigError: another form, naming the one expected.
    """
    module_name, colon, attr = spec.partition(":")
    if not colon or not all(part.isidentifier() for part in [*module_name.split("."), attr]):
        raise ConfigError(f"{what} {spec!r} must look like 'package.module:function'")
    return spec


def _import_attr(spec: str, what: str) -> Any:
    check_import_spec(spec, what)
    module_name, _, attr = spec.partition(":")
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

        try:
            return load_file(str(path))
        except Exception as err:  # safetensors' own SafetensorError: a truncated or corrupt file
            raise DataError(f"{path} is not a readable safetensors file ({_first_line(err)}); save it again "
                            "with safetensors.torch.save_file or st.save") from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise DataError(f"{path} is not a weights-only torch file ({_first_line(err)}); save a state_dict "
                        "(torch.save(model.state_dict(), ...)) or use safetensors") from None
    if not isinstance(state, dict):
        raise DataError(f"{path} does not hold a state dict")
    return state


def _first_line(err: BaseException) -> str:
    """The first non-empty line of an error's message, terminal colour codes removed."""
    import re

    text = re.sub(r"\x1b\[[0-9;]*m", "", str(err))
    return next((line.strip() for line in text.splitlines() if line.strip()), type(err).__name__)


def _state_mismatch(err: RuntimeError) -> str:
    """What ``load_state_dict`` found wrong, in one line: the missing / unexpected keys and the shape mismatches."""
    lines = [line.strip() for line in str(err).splitlines()[1:] if line.strip()]
    return "; ".join(lines)[:600] or _first_line(err)


def check_zoo_spec(spec: str, what: str, error: type[Exception]) -> str:
    """Check that ``zoo:NAME`` names a zoo entry; returns ``spec``.

    Raises:
        error: an unknown name, with the close match and the zoo's names (``what`` is "model" or "data set").
    """
    from slimtorch import zoo
    from slimtorch.config import suggest

    name = spec[4:]
    if name not in zoo.names():
        raise error(f"no zoo {what} {name!r}{suggest(name, zoo.names())}; the zoo has {zoo.names()}")
    return spec


def check_model_spec(spec: str) -> str:
    """Check the form of a CLI model spec without building anything; returns it.

    Raises:
        ConfigError: an unknown zoo name (with the close match), a file or a folder without ``config.json``, or
            a spec of no known form, naming the forms that are accepted.
    """
    forms = "use zoo:NAME, package.module:factory, or a Hugging Face model folder"
    if spec.startswith("zoo:"):
        return check_zoo_spec(spec, "model", ConfigError)
    path = Path(spec)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ConfigError(f"folder {spec} has no config.json, so it is not a Hugging Face model folder; {forms}")
        return spec
    if path.is_file():
        raise ConfigError(f"model {spec!r} is a file: {forms}, and give a state dict with --weights")
    if ":" not in spec:
        raise ConfigError(f"model {spec!r} is not understood (no such folder): {forms}")
    return check_import_spec(spec, "model")


def resolve_model(spec: str, weights: str | Path | None = None) -> Resolved:
    """Turn a CLI model spec into a model.

    Raises:
        ConfigError: a malformed spec, an unknown zoo name or an import failure, with the fix, or weights given for
            a model that brings its own.
    """
    check_model_spec(spec)
    if weights and (spec.startswith("zoo:") or Path(spec).is_dir()):
        raise ConfigError(f"--weights applies to a package.module:factory model; {spec} brings its own weights "
                          "(load a model saved by slimtorch with export --artifact)")
    if spec.startswith("zoo:"):
        from slimtorch import zoo

        name = spec[4:]
        model, zoo_data = zoo.load(name)
        return Resolved(model, lambda: zoo.build(name), zoo_data, zoo_data.example_inputs(1), name)
    path = Path(spec)
    if path.is_dir():
        return _hf_directory(path)
    factory = _import_attr(spec, "model")
    try:
        model = factory()
    except Exception as err:  # the user's code: a factory that needs arguments, or fails building
        raise ConfigError(f"model factory {spec!r} failed when called with no arguments ({type(err).__name__}: "
                          f"{_first_line(err)}); point at a function that builds the model") from None
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model factory {spec!r} returned {type(model).__name__}, not an nn.Module")
    if weights:
        state = load_state_file(Path(weights))
        try:
            model.load_state_dict(state)
        except RuntimeError as err:
            raise DataError(f"weights {weights} do not fit {spec}: {_state_mismatch(err)}") from None
    return Resolved(model.eval(), factory, name=spec.rpartition(":")[2])


def _hf_class(path: Path) -> Any:
    """The transformers class named in ``config.json``'s ``architectures``, else ``AutoModel`` (the base model:
    never a task head the checkpoint does not hold)."""
    import transformers

    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ConfigError(f"{path / 'config.json'} is not readable JSON ({err})") from None
    names = config.get("architectures") or []
    if not names:
        return transformers.AutoModel
    try:
        cls = getattr(transformers, names[0], None)
    except (ImportError, RuntimeError):
        cls = None
    if not isinstance(cls, type):
        raise ConfigError(
            f"{path / 'config.json'} names architecture {names[0]!r}, which transformers {transformers.__version__} "
            "does not have (slimtorch never runs a checkpoint's own code): upgrade transformers, or build the model "
            "with a package.module:factory and pass its weights with --weights"
        )
    return cls


def _hf_from_pretrained(cls: Any, path: Path) -> tuple[nn.Module, list[str]]:
    """Load ``cls`` from the folder (safetensors only, never unpickling), quietly; returns the model and the names of
    the weights transformers initialised at random because the checkpoint lacks them or their shape differs."""
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()  # its multi-line load report is replaced by one line of ours
    hf_logging.disable_progress_bar()
    try:
        model, info = cls.from_pretrained(str(path), local_files_only=True, use_safetensors=True,
                                          output_loading_info=True)
    except (OSError, ValueError) as err:
        raise ConfigError(f"cannot load the Hugging Face model in {path}: {str(err).splitlines()[0]} (slimtorch "
                          "reads model.safetensors only, never pickled .bin files)") from None
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
    mismatched = [key[0] if isinstance(key, tuple) else key for key in info.get("mismatched_keys", ())]
    return model, sorted({*info.get("missing_keys", ()), *mismatched})


def _hf_directory(path: Path) -> Resolved:
    """Build the class ``config.json`` names (else the base ``AutoModel``) with the folder's weights; any weight
    transformers had to initialise at random is named in one line on stderr."""
    try:
        import transformers  # noqa: F401
    except ImportError:
        raise ConfigError("a Hugging Face model folder needs the 'hf' extra: pip install 'slimtorch[hf]'") from None
    cls = _hf_class(path)
    model, fresh = _hf_from_pretrained(cls, path)
    if fresh:
        print(f"note: {len(fresh)} weights of {type(model).__name__} are not in {path} and were initialised at random: "
              f"{', '.join(fresh)}", file=sys.stderr)

    def build() -> nn.Module:
        return _hf_from_pretrained(cls, path)[0]

    example = {"input_ids": torch.ones(1, 16, dtype=torch.long), "attention_mask": torch.ones(1, 16, dtype=torch.long)}
    return Resolved(model.eval(), build, None, example, path.name)


def example_inputs(resolved: Resolved, input_shape: tuple[int, ...] | None, batch_size: int | None, spec: str) -> Any:
    """The CLI's example inputs: random data of ``--input-shape``, else a batch of the model's zoo data, else the
    example the model spec carries (Hugging Face folders).

    Raises:
        ConfigError: none of these is available (the message asks for ``--input-shape``).
    """
    if input_shape:
        return torch.randn(input_shape)
    if resolved.data is not None:
        return resolved.data.example_inputs(batch_size or 1)
    if resolved.example_inputs is not None:
        return resolved.example_inputs
    raise ConfigError(f"{spec} needs --input-shape (e.g. --input-shape 1,3,224,224)")
