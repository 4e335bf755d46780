"""Pruning masks that hold through training, and folding them into plain weights.

A masked layer keeps its own class (``nn.Linear`` stays ``nn.Linear``, so quantization, structured pruning,
export and FLOP counting see an ordinary layer). It gains:

- a non-persistent buffer ``slim_mask`` (1 keeps a weight, 0 prunes it; not ``weight_mask``, the name
  torch.nn.utils.prune uses, so the two never collide);
- a forward pre-hook that, in training mode, multiplies the weight by the mask before the forward, so a
  custom training loop never computes with a pruned weight;
- a gradient hook on the weight that zeroes the gradient of pruned entries, so optimizers (with momentum,
  Adam) do not move them and they stay exactly zero after ``optimizer.step()``.

The pruned weights themselves are zero, so ``slimtorch.save`` stores them as a bitmask plus values and
``slimtorch.load`` returns exactly the pruned weights; :func:`restore_masks` re-attaches masks after a load
when training is to continue. :func:`make_permanent` removes masks and hooks, leaving plain zeros.
"""

from __future__ import annotations

import torch
from torch import nn

from slimtorch.layer_kinds import is_transposed_linear

MASK = "slim_mask"
_HOOKS = "_slim_mask_hooks"


def _mask_forward(module: nn.Module, args: tuple) -> None:
    """Forward pre-hook: re-zero pruned weights while training (a no-op cost in eval mode)."""
    if module.training and not torch.compiler.is_compiling():
        with torch.no_grad():
            module.weight.mul_(getattr(module, MASK))


class _MaskGrad:
    """Gradient hook zeroing the gradients of pruned weights (holds the module, not the mask, so a deep copy
    of the model re-attaches its own hooks through :func:`restore_masks`)."""

    def __init__(self, module: nn.Module):
        self.module = module

    def __call__(self, grad: torch.Tensor) -> torch.Tensor:
        return grad * getattr(self.module, MASK)


def is_masked(module: nn.Module) -> bool:
    """True when ``module`` carries a pruning mask."""
    return isinstance(getattr(module, MASK, None), torch.Tensor)


def attach_mask(module: nn.Module, mask: torch.Tensor, *, keep_pruned: bool = True) -> None:
    """Attach (or tighten) the pruning mask of ``module`` and zero its pruned weights now.

    Args:
        module: a layer with a ``weight`` parameter.
        mask: bool or 0/1 tensor of the weight's shape; True keeps a weight.
        keep_pruned: weights already pruned stay pruned (the new mask is combined with the old one); False
            replaces the mask, letting pruned weights (still zero) train again.
    """
    weight = module.weight
    if mask.shape != weight.shape:
        raise ValueError(f"mask shape {tuple(mask.shape)} does not match weight shape {tuple(weight.shape)}")
    mask = mask.to(device=weight.device, dtype=weight.dtype)
    if is_masked(module) and keep_pruned:
        mask = mask * getattr(module, MASK)
    if is_masked(module):
        getattr(module, MASK).copy_(mask)
    else:
        module.register_buffer(MASK, mask, persistent=False)
    with torch.no_grad():
        weight.mul_(mask)
    _hook(module)


def _hook(module: nn.Module) -> None:
    """Install the forward and gradient hooks once per module object and weight tensor.

    Object ids (not references) mark what was hooked: a deep copy carries the forward hook but neither the
    gradient hook nor valid handles, so it gets fresh hooks and never touches the original's.
    """
    key = (id(module), id(module.weight))
    hooks = module.__dict__.get(_HOOKS)
    if hooks is not None and hooks[0] == key:
        return
    if hooks is not None and hooks[0][0] == id(module):
        hooks[1].remove()  # same module, new weight tensor: drop the old gradient hook
    _drop_forward_hook(module)
    module.register_forward_pre_hook(_mask_forward)
    grad = module.weight.register_hook(_MaskGrad(module))
    module.__dict__[_HOOKS] = (key, grad)


def _drop_forward_hook(module: nn.Module) -> None:
    for key, fn in list(module._forward_pre_hooks.items()):
        if fn is _mask_forward:
            del module._forward_pre_hooks[key]


def apply_masks(model: nn.Module) -> None:
    """Zero every pruned weight again (call after an optimizer step in a loop that skips the forward hook)."""
    with torch.no_grad():
        for module in model.modules():
            if is_masked(module):
                module.weight.mul_(getattr(module, MASK))


def masks(model: nn.Module) -> dict[str, torch.Tensor]:
    """Layer name -> bool mask (True = kept) of every masked layer."""
    return {name: getattr(m, MASK).bool() for name, m in model.named_modules() if is_masked(m)}


def restore_masks(model: nn.Module, layers: list[str] | None = None) -> int:
    """Re-attach masks from the zeros of the weights: after ``slimtorch.load`` or ``copy.deepcopy``.

    Layers that already have a mask keep it (its hooks are re-installed on the copy). Layers without one get
    ``weight != 0`` when named in ``layers``; with ``layers=None`` only already-masked layers are touched.

    Returns:
        The number of layers whose masks are active.
    """
    count = 0
    for name, module in model.named_modules():
        if is_masked(module):
            attach_mask(module, getattr(module, MASK).clone())
            count += 1
        elif layers is not None and name in layers and isinstance(getattr(module, "weight", None), nn.Parameter):
            attach_mask(module, module.weight.detach() != 0)
            count += 1
    return count


def sparse_layers(model: nn.Module, min_sparsity: float = 0.1) -> list[str]:
    """Names of Linear/Conv layers (GPT-2 ``Conv1D`` included) whose weights are at least ``min_sparsity`` (0-1)
    exact zeros: pruned layers, e.g. of a model loaded from disk (a trained dense layer has essentially no exact
    zeros)."""
    out = []
    for name, module in model.named_modules():
        weight = getattr(module, "weight", None)
        # a weight that is no Parameter is computed (e.g. by torch.nn.utils.prune from weight_orig): not ours
        layer = isinstance(module, nn.Linear | nn.Conv1d | nn.Conv2d | nn.Conv3d) or is_transposed_linear(module)
        if layer and isinstance(weight, nn.Parameter):
            if weight.is_floating_point() and weight.numel() and float((weight == 0).float().mean()) >= min_sparsity:
                out.append(name)
    return out


def make_permanent(model: nn.Module) -> nn.Module:
    """Fold every pruning mask into its weights and remove masks and hooks, leaving plain layers with zeros.

    Args:
        model: a model pruned with ``UnstructuredPruning``, ``NMPruning`` or a pruning schedule (in place).

    Returns:
        The same model, with no pruning state left; pruned weights stay exactly zero.

    Example:
        >>> import slimtorch as st, torch
        >>> model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Linear(8, 2))
        >>> model = st.make_permanent(st.prune(model, st.UnstructuredPruning(sparsity=0.5)))
        >>> float((model[0].weight == 0).float().mean())
        0.5
    """
    for module in model.modules():
        if not is_masked(module):
            continue
        with torch.no_grad():
            module.weight.mul_(getattr(module, MASK))
        hooks = module.__dict__.pop(_HOOKS, None)
        if hooks is not None and hooks[0][0] == id(module):
            hooks[1].remove()
        _drop_forward_hook(module)
        del module._buffers[MASK]
    return model


def sparsity(model: nn.Module, layers: list[str] | None = None) -> dict[str, float]:
    """Fraction of zero weights (0-1) per layer: the masked layers, or the layers named in ``layers``."""
    out = {}
    for name, module in model.named_modules():
        chosen = name in layers if layers is not None else is_masked(module)
        weight = getattr(module, "weight", None)
        if chosen and isinstance(weight, torch.Tensor) and weight.numel():
            out[name] = float((weight.detach() == 0).sum()) / weight.numel()
    return out
