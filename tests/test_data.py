import pytest
import torch

from slimtorch.data import as_loader, batch_size, call, first_tensor, iter_inputs, run_hooked, split_batch
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


def test_run_hooked_counts_batches_and_removes_hooks_even_on_error():
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.ReLU())
    seen_in, seen_out = [], []
    n = run_hooked(model, [torch.randn(4, 3), torch.randn(5, 3)],
                   pre={model[0]: lambda m, a: seen_in.append(a[0].shape[0])},
                   post={model[1]: lambda m, a, o: seen_out.append(o.requires_grad)})
    assert n == 2 and seen_in == [4, 5] and seen_out == [False, False]  # no gradients recorded
    with pytest.raises(RuntimeError):
        run_hooked(model, [torch.randn(4, 7)], pre={model[0]: lambda m, a: None})
    assert not model[0]._forward_pre_hooks and not model[1]._forward_hooks
