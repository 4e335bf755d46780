import pytest
import torch

from slimtorch.data import as_loader, batch_size, call, first_tensor, iter_inputs, split_batch
from slimtorch.errors import DataError


def test_split_batch_forms():
    x, y = torch.randn(2, 3), torch.tensor([0, 1])
    assert split_batch(x)[1] is None
    assert split_batch((x, y))[1] is y
    inputs, target = split_batch({"input_ids": x, "labels": y})
    assert set(inputs) == {"input_ids"} and target is y
    assert split_batch((x, x, y))[0] == (x, x)


def test_iter_inputs_limits_batches_and_drops_targets():
    batches = [(torch.full((2, 1), float(i)), torch.zeros(2)) for i in range(5)]
    got = list(iter_inputs(batches, num_batches=3))
    assert len(got) == 3 and float(got[2][0, 0]) == 2.0


def test_missing_or_bad_data_is_a_data_error():
    with pytest.raises(DataError, match="needs data"):
        as_loader(None)
    with pytest.raises(DataError, match="iterable"):
        as_loader(42)


def test_call_and_first_tensor():
    model = torch.nn.Linear(3, 2)
    x = torch.randn(4, 3)
    assert call(model, x).shape == (4, 2)
    assert call(model, (x,)).shape == (4, 2)
    assert first_tensor((call(model, x), None)).shape == (4, 2)
    assert batch_size({"a": x}) == 4
