import numpy as np
import pytest
import torch
from PIL import Image

import slimtorch as st
from slimtorch.cli.data_spec import LoaderPair, resolve_data


def test_image_folder_gives_labelled_loaders(tmp_path):
    rng = np.random.default_rng(0)
    for cls in ("cat", "dog"):
        (tmp_path / cls).mkdir()
        for i in range(5):
            Image.fromarray(rng.integers(0, 255, (10, 12, 3), dtype=np.uint8)).save(tmp_path / cls / f"{i}.png")
    data = resolve_data(str(tmp_path), image_size=8)
    x, y = next(iter(data.train))
    assert x.shape[1:] == (3, 8, 8) and 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    assert len(data.train.dataset) + len(data.test.dataset) == 10
    assert set(torch.cat([b[1] for b in data.test]).tolist()) <= {0, 1}


def test_empty_folder_and_unknown_spec(tmp_path):
    with pytest.raises(st.DataError, match="no class sub-folders"):
        resolve_data(str(tmp_path))
    with pytest.raises(st.DataError, match="is not understood"):
        resolve_data("nothing-here")


def loaders():
    batches = [(torch.randn(4, 3), torch.randint(0, 2, (4,)))]
    return batches, batches


def test_module_function_returning_two_loaders():
    data = resolve_data(f"{__name__}:loaders")
    assert isinstance(data, LoaderPair)
    assert 0.0 <= data.evaluate(torch.nn.Linear(3, 2)) <= 1.0
