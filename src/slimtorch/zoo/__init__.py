"""Built-in models and data (generated or shipped in a package; never downloaded).

``model, data = slimtorch.zoo.load("digits-cnn")`` returns a trained model (trained on first use with a
fixed seed, then cached) and its :class:`~slimtorch.zoo.digits.ZooData`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from slimtorch._log import logger
from slimtorch.config import suggest
from slimtorch.errors import ArtifactError, ConfigError
from slimtorch.zoo.digits import ZooData, load_digits_data
from slimtorch.zoo.fashion import load_fashion_data
from slimtorch.zoo.models import DigitsCNN, DigitsMLP, DigitsMobileNet


@dataclass(frozen=True)
class Entry:
    """How to build, feed and train one zoo model."""

    build: Callable[[], nn.Module]
    data: Callable[[], ZooData]
    epochs: int
    lr: float
    about: str


ENTRIES: dict[str, Entry] = {
    "digits-mlp": Entry(
        build=DigitsMLP,
        data=lambda: load_digits_data(image_size=8, flatten=True),
        epochs=20,
        lr=1e-3,
        about="MLP 64-1024-1024-10 on sklearn digits (1.1M parameters)",
    ),
    "digits-cnn": Entry(
        build=DigitsCNN,
        data=lambda: load_digits_data(image_size=16),
        epochs=12,
        lr=1e-3,
        about="residual CNN with BatchNorm on sklearn digits at 16x16 (0.5M parameters, 16.5M MACs/image)",
    ),
    "digits-mobilenet": Entry(
        build=DigitsMobileNet,
        data=lambda: load_digits_data(image_size=16),
        epochs=30,
        lr=3e-3,
        about="MobileNetV2-style CNN (depthwise convolutions, ReLU6, BatchNorm) on sklearn digits at 16x16",
    ),
    "fashion-mobilenet": Entry(
        build=DigitsMobileNet,
        data=lambda: load_fashion_data(train_size=30_000),
        epochs=6,
        lr=3e-3,
        about="the same MobileNetV2-style CNN on Fashion-MNIST at 28x28 (30,000 training images; needs the Debian "
              "package dataset-fashion-mnist or $SLIMTORCH_FASHION_MNIST)",
    ),
}

#: bump when a zoo model or its training changes, so stale caches are not used
CACHE_VERSION = 1


def names() -> list[str]:
    """Names of the zoo models."""
    return sorted(ENTRIES)


def cache_dir() -> Path:
    """Where trained zoo models are cached: ``$SLIMTORCH_CACHE`` or ``~/.cache/slimtorch``."""
    return Path(os.environ.get("SLIMTORCH_CACHE", Path.home() / ".cache" / "slimtorch"))


def _entry(name: str) -> Entry:
    if name not in ENTRIES:
        raise ConfigError(f"no zoo model {name!r}{suggest(name, ENTRIES)}; the zoo has {names()}")
    return ENTRIES[name]


def build(name: str) -> nn.Module:
    """A fresh, untrained instance of zoo model ``name`` (the architecture ``slimtorch.load`` needs)."""
    return _entry(name).build()


def data(name: str) -> ZooData:
    """The data set zoo model ``name`` is trained and evaluated on."""
    return _entry(name).data()


def train(name: str, seed: int = 0) -> tuple[nn.Module, ZooData]:
    """Train zoo model ``name`` from scratch with ``seed`` (no cache); returns the model and its data."""
    from slimtorch.train.finetune import Finetune, finetune

    entry = _entry(name)
    torch.manual_seed(seed)
    model = entry.build()
    zoo_data = entry.data()
    finetune(model, Finetune(epochs=entry.epochs, lr=entry.lr, weight_decay=1e-4), data=zoo_data, seed=seed)
    return model.eval(), zoo_data


def load(name: str, *, seed: int = 0, cache: bool = True) -> tuple[nn.Module, ZooData]:
    """Return ``(trained model, data)`` for zoo model ``name``, training it on first use and caching it.

    Args:
        name: one of :func:`names` ("digits-mlp", "digits-cnn", ...).
        seed: the training seed; the same seed gives the same model.
        cache: read and write the cache (see :func:`cache_dir`).

    Example:
        >>> import slimtorch as st
        >>> model, data = st.zoo.load("digits-mlp")
        >>> data.evaluate(model) > 0.95
        True
    """
    from slimtorch.io.load import load as load_artifact
    from slimtorch.io.save import save

    entry = _entry(name)
    path = cache_dir() / f"{name}-v{CACHE_VERSION}-seed{seed}-torch{torch.__version__.split('+')[0]}.safetensors"
    if cache and path.is_file():
        try:
            return load_artifact(path, model=entry.build()).eval(), entry.data()
        except ArtifactError as err:
            logger.warning("ignoring a damaged zoo cache file %s (%s); training again", path, err)
    logger.info("training zoo model %s (seed %d); cached afterwards in %s", name, seed, cache_dir())
    model, zoo_data = train(name, seed)
    if cache:
        save(model, path)
    return model, zoo_data


__all__ = ["ZooData", "build", "cache_dir", "data", "load", "names", "train"]
