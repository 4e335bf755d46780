"""Top-1 accuracy over a loader: hand-counted hits, batch forms, model outputs, errors and the model's mode."""

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from slimtorch.errors import DataError
from slimtorch.measure.accuracy import top1_accuracy


def _one_hot(classes: list[int], n: int = 4) -> torch.Tensor:
    """Scores whose arg-max is ``classes``: what an identity model predicts."""
    return torch.nn.functional.one_hot(torch.tensor(classes), n).float()


def test_accuracy_is_hits_over_samples_across_batches_of_different_sizes():
    batches = [
        (_one_hot([0, 1, 2, 3]), torch.tensor([0, 1, 2, 0])),  # 3 of 4
        (_one_hot([2]), torch.tensor([1])),  # 0 of 1
    ]
    # per sample (3 / 5), not the mean of per-batch accuracies ((0.75 + 0) / 2)
    assert top1_accuracy(nn.Identity(), batches) == 3 / 5


def test_a_real_classifier_against_a_hand_count():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))
    x = torch.randn(50, 6)
    y = torch.randint(0, 3, (50,))
    with torch.no_grad():
        hits = int((model(x).argmax(dim=1) == y).sum())
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16)  # 16+16+16+2
    assert top1_accuracy(model, loader) == hits / 50


def test_sequence_outputs_take_the_arg_max_of_the_last_dimension():
    scores = torch.zeros(2, 3, 5)
    scores[..., 4] = 1.0  # every token predicts class 4
    labels = torch.tensor([[4, 4, 0], [4, 1, 4]])
    assert top1_accuracy(nn.Identity(), [(scores, labels)]) == 4 / 6


def test_dict_batches_multiple_inputs_and_non_tensor_outputs():
    class TupleOut(nn.Module):
        def forward(self, a, b):
            return a + b, "extra"

    class Logits(nn.Module):
        def forward(self, input_ids):
            return SimpleNamespace(logits=input_ids)

    y = torch.tensor([0, 1, 1])
    # (a, b, labels): the last item is the label; a tuple output's first item is scored
    assert top1_accuracy(TupleOut(), [(_one_hot([0, 1, 2]), torch.zeros(3, 4), y)]) == 2 / 3
    # a dict batch: "labels" is the label, the rest are keyword inputs; an output with .logits is scored
    assert top1_accuracy(Logits(), [{"input_ids": _one_hot([0, 0, 1]), "labels": y}]) == 2 / 3


def test_runs_in_eval_and_inference_mode_and_restores_training_mode():
    seen = []

    class Spy(nn.Module):
        def forward(self, x):
            seen.append((self.training, torch.is_inference_mode_enabled()))
            return x

    model = Spy().train()
    top1_accuracy(model, [(_one_hot([1]), torch.tensor([1]))] * 2)
    assert seen == [(False, True), (False, True)] and model.training
    assert top1_accuracy(model.eval(), [(_one_hot([1]), torch.tensor([1]))]) == 1.0 and not model.training


def test_unlabelled_or_empty_loaders_are_data_errors_and_the_mode_is_still_restored():
    model = nn.Identity().train()
    with pytest.raises(DataError, match="labelled batches"):
        top1_accuracy(model, [_one_hot([0, 1])])  # a bare tensor: no labels
    assert model.training
    with pytest.raises(DataError, match="labelled batches"):
        top1_accuracy(model, [(_one_hot([0, 1]),)])  # a 1-tuple: inputs only
    with pytest.raises(DataError, match="no samples"):
        top1_accuracy(model, [])
    assert model.training


def test_column_labels_count_each_sample_once():
    scores = _one_hot([0, 0, 0, 0])  # every prediction is class 0
    labels = torch.tensor([[0], [0], [1], [2]])  # [B, 1], as a TensorDataset of unsqueezed labels yields
    try:
        accuracy = top1_accuracy(nn.Identity(), [(scores, labels)])
    except DataError:  # refusing the label shape would be a fix too
        return
    assert accuracy == 2 / 4  # today: 8 / 4 = 2.0
