"""Parse-time checks of command-line values: each function is an argparse ``type=`` that returns the parsed value
or refuses it with ``argparse.ArgumentTypeError``, whose message says what is allowed (argparse prefixes the
option's name; ``slimtorch.cli.main`` prints it as one line and exits with code 2)."""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Any

from slimtorch.errors import SlimError


def _refusing(check: Callable[[str], Any]) -> Callable[[str], Any]:
    """Turn a check raising ``SlimError`` into an argparse type (argparse names the option in its message)."""

    @wraps(check)
    def parse(text: str) -> Any:
        try:
            return check(text)
        except SlimError as err:
            raise argparse.ArgumentTypeError(str(err)) from None

    return parse


def _integer(text: str, least: int, what: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer; give {what}") from None
    if value < least:
        raise argparse.ArgumentTypeError(f"{text!r} is out of range; give {what}")
    return value


def positive_int(text: str) -> int:
    """A count, a size or a batch size: an integer >= 1."""
    return _integer(text, 1, "a positive integer like 32")


def seed(text: str) -> int:
    """A random seed: an integer >= 0."""
    return _integer(text, 0, "a non-negative integer like 0")


def shape(text: str) -> tuple[int, ...]:
    """``"1,3,224,224"`` (or ``"1x3x224x224"``) -> ``(1, 3, 224, 224)``: positive integers, no empty parts."""
    example = "positive integers separated by commas, like 1,3,224,224"
    dims = []
    for i, part in enumerate(re.split(r"[,x]", text)):
        if not part.strip():
            raise argparse.ArgumentTypeError(f"{text!r} has an empty part (number {i + 1}); give {example}")
        try:
            dims.append(int(part))
        except ValueError:
            dims.append(0)
        if dims[-1] <= 0:
            raise argparse.ArgumentTypeError(f"{text!r}: {part.strip()!r} is not a positive integer; give {example}")
    return tuple(dims)


def existing_file(text: str) -> Path:
    """A file to read: it must exist and not be a folder."""
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a folder; give a file")
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"{text} does not exist")
    return path


def _check_writable_parent(path: Path, text: str) -> None:
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise argparse.ArgumentTypeError(f"cannot write {text}: {parent} is a file, not a folder")


def output_file(text: str) -> Path:
    """A file to write: not an existing folder, and no existing file in the way of its folders."""
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a folder; give a file name")
    _check_writable_parent(path, text)
    return path


def onnx_file(text: str) -> Path:
    """An ONNX file to write: as :func:`output_file`, ending in ``.onnx``."""
    if not text.endswith(".onnx"):
        raise argparse.ArgumentTypeError(f"{text!r} must name a .onnx file")
    return output_file(text)


def output_folder(text: str) -> Path:
    """A folder to write into (created if missing): not an existing file."""
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a file; give a folder")
    _check_writable_parent(path, text)
    return path


def artifact(text: str) -> Path:
    """A model saved by slimtorch: ``NAME.safetensors`` (the suffix may be left out) that exists."""
    from slimtorch.io.save import artifact_path

    path = artifact_path(text)
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"no saved model at {path} (slimtorch.save writes NAME.safetensors)")
    return path


@_refusing
def recipe(text: str) -> Any:
    """A recipe file or ``builtin:NAME``, read and validated (a missing built-in lists the names)."""
    from slimtorch.recipe import load_recipe

    return load_recipe(text)


@_refusing
def model_spec(text: str) -> str:
    """``zoo:NAME``, ``package.module:factory`` or a Hugging Face model folder, checked for its form."""
    from slimtorch.cli.model_spec import check_model_spec

    return check_model_spec(text)


@_refusing
def zoo_model(text: str) -> str:
    """``zoo:NAME`` of a zoo model."""
    from slimtorch.cli.model_spec import check_model_spec
    from slimtorch.errors import ConfigError

    if not text.startswith("zoo:"):
        raise ConfigError(f"{text!r} is not a zoo model; give zoo:NAME")
    return check_model_spec(text)


@_refusing
def data_spec(text: str) -> str:
    """``zoo:NAME``, an image folder or ``package.module:function``, checked for its form."""
    from slimtorch.cli.data_spec import check_data_spec

    return check_data_spec(text)
