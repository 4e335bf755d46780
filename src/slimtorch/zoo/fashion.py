"""Fashion-MNIST (70,000 28x28 grey images of clothes, 10 classes) from a local copy; never downloaded.

The files are the four IDX archives the Debian package ``dataset-fashion-mnist`` installs under
``/usr/share/datasets/fashion-mnist`` (``apt install dataset-fashion-mnist``); ``$SLIMTORCH_FASHION_MNIST`` points
to another folder holding the same four files. Images are scaled to [0, 1] and normalised; the official
train/test split is kept.
"""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from slimtorch.errors import DataError
from slimtorch.zoo.digits import ZooData

FOLDER = Path("/usr/share/datasets/fashion-mnist")
FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
         "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}
MEAN, STD = 0.286, 0.353


def folder() -> Path:
    """Where the archives are read from: ``$SLIMTORCH_FASHION_MNIST`` or the Debian package's folder."""
    return Path(os.environ.get("SLIMTORCH_FASHION_MNIST", FOLDER))


def read_idx(path: Path) -> np.ndarray:
    """The array an IDX file (gzip-compressed) holds: unsigned bytes, its shape from the header.

    Raises:
        DataError: the file is missing, is not an unsigned-byte IDX file, or is shorter than its header says.
    """
    try:
        raw = gzip.decompress(path.read_bytes())
    except (OSError, EOFError, gzip.BadGzipFile) as err:
        raise DataError(f"cannot read {path} ({err}); install the data with `apt install dataset-fashion-mnist` or "
                        "set SLIMTORCH_FASHION_MNIST to a folder with the four Fashion-MNIST .gz files") from None
    if len(raw) < 4 or raw[:2] != b"\0\0" or raw[2] != 0x08:
        raise DataError(f"{path} is not an unsigned-byte IDX file (magic {raw[:4].hex()}, expected 000008xx)")
    dims = raw[3]
    shape = struct.unpack(f">{dims}I", raw[4:4 + 4 * dims])
    body = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * dims)
    if body.size != int(np.prod(shape)):
        raise DataError(f"{path} holds {body.size} values, its header says {shape}")
    return body.reshape(shape)


def load_fashion_data(*, train_size: int | None = None, batch_size: int = 128, seed: int = 0) -> ZooData:
    """Build the Fashion-MNIST loaders (inputs ``[N, 1, 28, 28]``).

    Args:
        train_size: use the first this many training images (None: all 60,000); the test split is always whole.
        batch_size: batch size of the training and calibration loaders (the test loader uses 500).
        seed: seed of the training loader's shuffling.

    Raises:
        DataError: the archives are not there (the message says how to install them) or are damaged.
    """
    split = {}
    for name, (images, labels) in FILES.items():
        x = torch.from_numpy(read_idx(folder() / images).copy()).float().div_(255.0).unsqueeze(1)
        y = torch.from_numpy(read_idx(folder() / labels).astype(np.int64))
        if len(x) != len(y):
            raise DataError(f"Fashion-MNIST {name}: {len(x)} images but {len(y)} labels")
        split[name] = ((x - MEAN) / STD, y)
    x, y = split["train"]
    if train_size is not None:
        x, y = x[:train_size], y[:train_size]
    train_set = TensorDataset(x, y)
    return ZooData(
        train=DataLoader(train_set, batch_size=batch_size, shuffle=True, generator=torch.Generator().manual_seed(seed)),
        test=DataLoader(TensorDataset(*split["test"]), batch_size=500),
        calibration=DataLoader(train_set, batch_size=batch_size, shuffle=False),
        num_classes=10,
        input_shape=(1, 28, 28),
    )
