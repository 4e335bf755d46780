"""The Fashion-MNIST reader: IDX archives parsed from a local folder, clear errors when they are missing or damaged."""

import gzip
import struct

import numpy as np
import pytest
import torch

import slimtorch as st
from slimtorch.zoo import fashion


def _idx(path, array):
    header = b"\0\0\x08" + bytes([array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))


def _folder(tmp_path, n_train=6, n_test=4):
    rng = np.random.default_rng(0)
    arrays = {"train": (rng.integers(0, 256, (n_train, 28, 28)), np.arange(n_train) % 10),
              "test": (rng.integers(0, 256, (n_test, 28, 28)), np.arange(n_test) % 10)}
    for split, (images, labels) in fashion.FILES.items():
        _idx(tmp_path / images, arrays[split][0])
        _idx(tmp_path / labels, arrays[split][1])
    return arrays


def test_reads_the_four_archives_normalised_with_the_official_split(tmp_path, monkeypatch):
    arrays = _folder(tmp_path)
    monkeypatch.setenv("SLIMTORCH_FASHION_MNIST", str(tmp_path))
    data = fashion.load_fashion_data(train_size=5, batch_size=2)
    x, y = data.train.dataset.tensors
    assert x.shape == (5, 1, 28, 28) and torch.equal(y, torch.arange(5))
    want = (torch.from_numpy(arrays["train"][0][:5]).float() / 255 - fashion.MEAN) / fashion.STD
    torch.testing.assert_close(x[:, 0], want)
    assert data.test.dataset.tensors[0].shape == (4, 1, 28, 28) and data.input_shape == (1, 28, 28)


def test_missing_files_name_the_package_to_install(tmp_path, monkeypatch):
    monkeypatch.setenv("SLIMTORCH_FASHION_MNIST", str(tmp_path))
    with pytest.raises(st.DataError, match="apt install dataset-fashion-mnist"):
        fashion.load_fashion_data()


def test_damaged_archives_are_refused(tmp_path):
    bad = tmp_path / "x.gz"
    bad.write_bytes(gzip.compress(b"\0\0\x0d\x01" + struct.pack(">I", 3) + b"abc"))
    with pytest.raises(st.DataError, match="not an unsigned-byte IDX file"):
        fashion.read_idx(bad)
    short = tmp_path / "y.gz"
    short.write_bytes(gzip.compress(b"\0\0\x08\x02" + struct.pack(">2I", 2, 3) + b"abcd"))
    with pytest.raises(st.DataError, match="holds 4 values, its header says"):
        fashion.read_idx(short)
    (tmp_path / "z.gz").write_bytes(b"not gzip")
    with pytest.raises(st.DataError, match="cannot read"):
        fashion.read_idx(tmp_path / "z.gz")
