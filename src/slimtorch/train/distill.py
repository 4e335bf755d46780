"""Knowledge-distillation losses (pure functions on tensors) and the hooks that collect hidden features."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from slimtorch.data import first_tensor
from slimtorch.errors import ConfigError


def soft_target_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(teacher || student) on temperature-softened distributions, scaled by T^2 (Hinton et al., 2015).

    Returns:
        A scalar tensor, averaged over the batch.
    """
    t = temperature
    log_p_student = F.log_softmax(student_logits / t, dim=-1)
    log_p_teacher = F.log_softmax(teacher_logits / t, dim=-1)
    return F.kl_div(log_p_student, log_p_teacher, log_target=True, reduction="batchmean") * (t * t)


def feature_mse(student: Sequence[torch.Tensor], teacher: Sequence[torch.Tensor],
                names: Sequence[str]) -> torch.Tensor:
    """Mean over layers of the MSE between student and teacher hidden features (FitNets-style hints).

    Each pair is normalised by the teacher feature's mean square, so layers of different scale weigh alike.

    Raises:
        ConfigError: a pair of features with different shapes (e.g. after structured pruning of that layer),
            naming the layer.
    """
    total = torch.zeros(())
    for s, t, name in zip(student, teacher, names, strict=True):
        if s.shape != t.shape:
            raise ConfigError(f"Finetune.feature_layers: layer {name!r} gives {tuple(s.shape)} in the student but "
                              f"{tuple(t.shape)} in the teacher; match only layers whose output shape is unchanged")
        total = total + F.mse_loss(s.float(), t.float()) / t.float().pow(2).mean().clamp_min(1e-8)
    return total / max(len(names), 1)


class FeatureTap:
    """Forward hooks keeping the latest output of named layers (``with FeatureTap(model, names) as tap``).

    Args:
        model: the model whose layers are tapped.
        names: qualified layer names, as in ``model.named_modules()``.

    Raises:
        ConfigError: a name that is not a layer of the model, with some real names.
    """

    def __init__(self, model: nn.Module, names: Sequence[str]):
        self.names = list(names)
        self.outputs: dict[str, torch.Tensor] = {}
        modules = dict(model.named_modules())
        missing = [n for n in self.names if n not in modules]
        if missing:
            raise ConfigError(f"Finetune.feature_layers names {missing}, which are not layers of the model; "
                              f"layers are named like {[n for n in modules if n][:8]}")
        self._handles = [modules[n].register_forward_hook(self._keep(n)) for n in self.names]

    def _keep(self, name: str):
        def hook(_module: nn.Module, _args: tuple, output) -> None:
            self.outputs[name] = first_tensor(output)

        return hook

    def features(self) -> list[torch.Tensor]:
        """The tapped outputs of the last forward, in ``names`` order."""
        return [self.outputs[n] for n in self.names]

    def close(self) -> None:
        """Remove the hooks."""
        for h in self._handles:
            h.remove()

    def __enter__(self) -> FeatureTap:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
