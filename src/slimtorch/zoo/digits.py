"""The handwritten-digits data set that ships inside scikit-learn (1,797 8x8 images, 10 classes).

Nothing is downloaded. Images are scaled to [0, 1], normalised, and for the CNN upsampled to 16x16 so the
convolutions have room to work; the split is stratified and fixed by the seed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from slimtorch.measure.accuracy import top1_accuracy

MEAN, STD = 0.3, 0.4


@dataclass
class ZooData:
    """A zoo data set: ``train`` and ``test`` loaders, ``evaluate(model)`` (accuracy 0-1) and example inputs."""

    train: DataLoader
    test: DataLoader
    calibration: DataLoader
    num_classes: int
    input_shape: tuple[int, ...]

    def evaluate(self, model: nn.Module) -> float:
        """Top-1 accuracy (fraction 0-1) of ``model`` on the test split."""
        return top1_accuracy(model, self.test)

    def example_inputs(self, batch_size: int = 1) -> torch.Tensor:
        """The first ``batch_size`` test images, as one input tensor."""
        return self.test.dataset.tensors[0][:batch_size]


def _tensors(image_size: int, flatten: bool) -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0  # (N, 1, 8, 8)
    if image_size != 8:
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False)
    x = (x - MEAN) / STD
    if flatten:
        x = x.flatten(1)  # (N, 64)
    return x, torch.tensor(digits.target, dtype=torch.long)


def load_digits_data(
    *, image_size: int = 8, flatten: bool = False, batch_size: int = 64, seed: int = 0, test_fraction: float = 0.2
) -> ZooData:
    """Build the digits loaders: a stratified train/test split fixed by ``seed``.

    Args:
        image_size: side of the square images (8 is the original; larger is bilinear upsampling).
        flatten: give vectors of ``image_size**2`` features (for MLPs) instead of 1-channel images.
        batch_size: batch size of the training loader (the test loader uses 256).
        seed: seed of the split and of the training loader's shuffling.
        test_fraction: share of each class held out for testing.
    """
    x, y = _tensors(image_size, flatten)
    gen = torch.Generator().manual_seed(seed)
    train_idx, test_idx = [], []
    for c in range(10):
        idx = (y == c).nonzero().flatten()
        idx = idx[torch.randperm(len(idx), generator=gen)]
        cut = int(round(len(idx) * test_fraction))
        test_idx.append(idx[:cut])
        train_idx.append(idx[cut:])
    tr, te = torch.cat(train_idx).sort().values, torch.cat(test_idx).sort().values
    train_set = TensorDataset(x[tr], y[tr])
    test_set = TensorDataset(x[te], y[te])
    return ZooData(
        train=DataLoader(train_set, batch_size=batch_size, shuffle=True,
                         generator=torch.Generator().manual_seed(seed)),
        test=DataLoader(test_set, batch_size=256),
        calibration=DataLoader(train_set, batch_size=batch_size, shuffle=False),
        num_classes=10,
        input_shape=tuple(x.shape[1:]),
    )
