"""Resolve the --data argument: ``zoo:NAME``, an image folder (one sub-folder per class), or
``package.module:function`` returning ``(train_loader, val_loader)`` or an object with ``train``/``test``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from slimtorch.errors import DataError
from slimtorch.measure.accuracy import top1_accuracy

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"}


@dataclass
class LoaderPair:
    """Train and test loaders from the command line, with top-1 accuracy on the test loader."""

    train: Any
    test: Any

    def evaluate(self, model: nn.Module) -> float:
        """Top-1 accuracy (fraction 0-1) on the test loader."""
        return top1_accuracy(model, self.test)

    def example_inputs(self, batch_size: int = 1) -> Any:
        """The first ``batch_size`` inputs of the test loader."""
        from slimtorch.data import split_batch

        inputs, _ = split_batch(next(iter(self.test)))
        return inputs[:batch_size] if isinstance(inputs, torch.Tensor) else inputs


def image_folder(root: Path, image_size: int, batch_size: int = 32, test_fraction: float = 0.2,
                 seed: int = 0) -> LoaderPair:
    """Load ``root/CLASS/*.png`` images (RGB, resized to ``image_size``, scaled to [0, 1]) into loaders.

    Raises:
        DataError: no class folders or no images.
    """
    from PIL import Image, UnidentifiedImageError

    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    if not classes:
        raise DataError(f"{root} has no class sub-folders; expected {root}/<class name>/<image files>")
    images, labels = [], []
    for label, cls in enumerate(classes):
        for file in sorted((root / cls).iterdir()):
            if file.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            try:
                img = Image.open(file).convert("RGB").resize((image_size, image_size))
            except (UnidentifiedImageError, OSError) as err:
                raise DataError(f"cannot read image {file}: {err}") from None
            images.append(torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8).view(image_size, image_size, 3))
            labels.append(label)
    if not images:
        raise DataError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) under {root}")
    x = torch.stack(images).permute(0, 3, 1, 2).float() / 255.0  # (N, 3, H, W)
    y = torch.tensor(labels)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    cut = max(1, int(len(y) * test_fraction))
    test_idx, train_idx = order[:cut], order[cut:]
    return LoaderPair(
        train=DataLoader(TensorDataset(x[train_idx], y[train_idx]), batch_size=batch_size, shuffle=True,
                         generator=torch.Generator().manual_seed(seed)),
        test=DataLoader(TensorDataset(x[test_idx], y[test_idx]), batch_size=256),
    )


def check_data_spec(spec: str) -> str:
    """Check the form of a --data spec without reading anything; returns it.

    Raises:
        DataError: an unknown zoo name (with the close match), a file, or a spec of no known form, naming the
            forms that are accepted.
    """
    forms = "use zoo:NAME, an image folder, or package.module:function"
    if spec.startswith("zoo:"):
        from slimtorch.cli.model_spec import check_zoo_spec

        return check_zoo_spec(spec, "data set", DataError)
    path = Path(spec)
    if path.is_dir():
        return spec
    if path.is_file():
        raise DataError(f"--data {spec!r} is a file: {forms}")
    if ":" not in spec:
        raise DataError(f"--data {spec!r} is not understood (no such folder): {forms}")
    from slimtorch.cli.model_spec import check_import_spec

    return check_import_spec(spec, "data")


def resolve_data(spec: str | None, image_size: int = 224) -> Any:
    """Turn a --data spec into a data object with ``train``/``test`` loaders (and ``evaluate``), or None.

    Raises:
        DataError: a spec that names nothing usable, with the forms that are accepted.
    """
    if spec is None:
        return None
    check_data_spec(spec)
    if spec.startswith("zoo:"):
        from slimtorch import zoo

        return zoo.data(spec[4:])
    path = Path(spec)
    if path.is_dir():
        return image_folder(path, image_size)
    from slimtorch.cli.model_spec import _import_attr

    result = _import_attr(spec, "data")()
    if hasattr(result, "train"):
        return result
    if isinstance(result, tuple | list) and len(result) == 2:
        return LoaderPair(*result)
    raise DataError(f"data function {spec} must return (train_loader, val_loader) or an object with .train/.test")
