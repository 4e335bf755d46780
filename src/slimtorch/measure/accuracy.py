"""Top-1 accuracy of a classifier over a data loader: the usual ``eval_fn``."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from slimtorch._log import progress
from slimtorch.data import call, first_tensor, split_batch
from slimtorch.errors import DataError


def top1_accuracy(model: nn.Module, loader: Iterable) -> float:
    """Fraction (0-1) of samples whose arg-max output equals the label, over every batch of ``loader``.

    Raises:
        DataError: the loader yields no labelled batch.
    """
    was_training = model.training
    model.eval()
    correct = total = 0
    try:
        with torch.inference_mode():
            for batch in progress(loader, "evaluating"):
                inputs, target = split_batch(batch)
                if target is None:
                    raise DataError("accuracy needs labelled batches (inputs, labels)")
                pred = first_tensor(call(model, inputs)).argmax(dim=-1)
                if target.dim() == pred.dim() + 1 and target.shape[-1] == 1:
                    target = target.squeeze(-1)  # labels as a column ([B, 1], a TensorDataset of unsqueezed labels)
                if target.shape != pred.shape:
                    raise DataError(f"labels of shape {tuple(target.shape)} do not match the predictions' "
                                    f"{tuple(pred.shape)}; pass one class index per sample")
                correct += int((pred == target).sum())
                total += int(target.numel())
    finally:
        model.train(was_training)
    if total == 0:
        raise DataError("the evaluation loader yielded no samples")
    return correct / total
