"""The digits data set: split sizes and disjointness, scaling, shapes, loaders and evaluate() on known models."""

from collections import Counter

import pytest
import torch
from sklearn.datasets import load_digits
from torch import nn

from slimtorch.zoo.digits import MEAN, STD, load_digits_data

CLASS_COUNTS = [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]  # sklearn's digits, 1,797 images
TEST_COUNTS = [round(n * 0.2) for n in CLASS_COUNTS]  # 36, 36, 35, 37, 36, 36, 36, 36, 35, 36


@pytest.fixture(scope="module")
def data():
    return load_digits_data()


def _rows(t):
    return Counter(tuple(r.tolist()) for r in t.flatten(1))


class Oracle(nn.Module):
    """A perfect classifier of the given images: one-hot logits of the stored label of the nearest image."""

    def __init__(self, x, y):
        super().__init__()
        self.x, self.y = x.flatten(1), y

    def forward(self, inp):
        nearest = torch.cdist(inp.flatten(1), self.x).argmin(1)
        return nn.functional.one_hot(self.y[nearest], 10).float()


class Constant(nn.Module):
    def __init__(self, label):
        super().__init__()
        self.label = label
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, inp):
        out = torch.zeros(inp.shape[0], 10)
        out[:, self.label] = 1.0
        return out


def test_split_sizes_are_stratified_per_class(data):
    x_tr, y_tr = data.train.dataset.tensors
    x_te, y_te = data.test.dataset.tensors
    assert len(y_te) == sum(TEST_COUNTS) == 359
    assert len(y_tr) == 1797 - 359 == 1438
    assert torch.bincount(y_te, minlength=10).tolist() == TEST_COUNTS
    train_counts = [n - t for n, t in zip(CLASS_COUNTS, TEST_COUNTS, strict=True)]
    assert torch.bincount(y_tr, minlength=10).tolist() == train_counts
    assert y_tr.dtype == torch.long and 0 <= int(y_tr.min()) and int(y_tr.max()) == 9 and data.num_classes == 10


def test_train_and_test_are_disjoint_and_cover_every_image(data):
    x_tr, x_te = data.train.dataset.tensors[0], data.test.dataset.tensors[0]
    everything = (torch.tensor(load_digits().images, dtype=torch.float32).unsqueeze(1) / 16 - MEAN) / STD
    # some digits images are exact duplicates: as multisets, train and test together are every image once
    assert len(x_tr) + len(x_te) == len(everything)
    assert _rows(x_tr) + _rows(x_te) == _rows(everything)


def test_images_are_scaled_and_normalised(data):
    digits = load_digits()
    x_te, y_te = data.test.dataset.tensors
    raw = torch.tensor(digits.images, dtype=torch.float32)
    assert x_te.shape[1:] == (1, 8, 8) and data.input_shape == (1, 8, 8)
    assert float(x_te.min()) == pytest.approx(-MEAN / STD) and float(x_te.max()) == pytest.approx((1 - MEAN) / STD)
    # the first test image is a real digits image with its own label
    match = ((raw / 16 - MEAN) / STD - x_te[0, 0]).abs().flatten(1).sum(1).argmin()
    torch.testing.assert_close((raw[match] / 16 - MEAN) / STD, x_te[0, 0])
    assert int(digits.target[int(match)]) == int(y_te[0])


def test_shapes_of_upsampled_and_flattened_variants():
    cnn = load_digits_data(image_size=16)
    assert cnn.input_shape == (1, 16, 16) and cnn.example_inputs(3).shape == (3, 1, 16, 16)
    mlp = load_digits_data(flatten=True)
    assert mlp.input_shape == (64,) and mlp.example_inputs().shape == (1, 64)
    both = load_digits_data(image_size=12, flatten=True)
    assert both.input_shape == (144,) and both.example_inputs(2).shape == (2, 144)
    # the flat and image versions hold the same numbers in the same order
    torch.testing.assert_close(mlp.test.dataset.tensors[0], load_digits_data().test.dataset.tensors[0].flatten(1))


def test_example_inputs_are_the_first_test_images(data):
    assert torch.equal(data.example_inputs(5), data.test.dataset.tensors[0][:5])
    assert torch.equal(data.example_inputs(5), next(iter(data.test))[0][:5])


def test_loaders_batch_sizes_and_order():
    data = load_digits_data(batch_size=100)
    assert [len(b[0]) for b in data.train][:2] == [100, 100] and len(data.train) == 15  # ceil(1438 / 100)
    assert len(next(iter(data.test))[0]) == 256
    calib = torch.cat([b[1] for b in data.calibration])
    assert torch.equal(calib, data.train.dataset.tensors[1])  # calibration is the train split, unshuffled
    shuffled = torch.cat([b[1] for b in data.train])
    assert sorted(shuffled.tolist()) == sorted(calib.tolist()) and not torch.equal(shuffled, calib)


def test_seed_fixes_the_split_and_the_shuffling():
    a, b, c = load_digits_data(seed=1), load_digits_data(seed=1), load_digits_data(seed=2)
    assert torch.equal(a.test.dataset.tensors[0], b.test.dataset.tensors[0])
    assert torch.equal(torch.cat([y for _, y in a.train]), torch.cat([y for _, y in b.train]))
    assert not torch.equal(a.test.dataset.tensors[0], c.test.dataset.tensors[0])
    assert torch.bincount(c.test.dataset.tensors[1], minlength=10).tolist() == TEST_COUNTS


def test_test_fraction_sets_the_held_out_share():
    data = load_digits_data(test_fraction=0.5)
    assert torch.bincount(data.test.dataset.tensors[1], minlength=10).tolist() == [round(n / 2) for n in CLASS_COUNTS]


def test_evaluate_of_a_perfect_and_a_constant_model(data):
    x_te, y_te = data.test.dataset.tensors
    oracle = Oracle(x_te, y_te).train()
    assert data.evaluate(oracle) == 1.0
    assert oracle.training  # evaluate restores the mode
    assert data.evaluate(Constant(3)) == pytest.approx(TEST_COUNTS[3] / 359)
    wrong = Oracle(x_te, (y_te + 1) % 10)
    assert data.evaluate(wrong) == 0.0
