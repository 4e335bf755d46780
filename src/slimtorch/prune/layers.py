"""Layer pruning: remove whole residual blocks or transformer layers, chosen by how little they change
their input on calibration data.

A removed block is replaced by :class:`Skip`, which passes its input through (as a 1-tuple when the block
returned a tuple, as Hugging Face layers do), so the model still runs and ``slimtorch.save``/``load``
rebuild it on the original architecture.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from slimtorch._log import logger
from slimtorch.data import call, first_tensor, iter_inputs, run_hooked
from slimtorch.errors import ConfigError, DataError, UnsupportedModelError
from slimtorch.handlers import handler
from slimtorch.io.manifest import register_module
from slimtorch.prune.config import LayerPruning
from slimtorch.select import matches


@register_module
class Skip(nn.Module):
    """Stands in for a removed block: returns its first input (wrapped in a tuple if ``tuple_output``)."""

    def __init__(self, tuple_output: bool = False) -> None:
        super().__init__()
        self.tuple_output = tuple_output

    def manifest_args(self) -> dict:
        """Constructor arguments for ``slimtorch.save``/``load``."""
        return {"tuple_output": self.tuple_output}

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """Return the first positional input (or the first keyword tensor)."""
        x = args[0] if args else next(v for v in kwargs.values() if isinstance(v, torch.Tensor))
        return (x,) if self.tuple_output else x


def block_similarity(inputs: torch.Tensor, outputs: torch.Tensor) -> float:
    """Mean cosine similarity between each sample's block input and output (1 = the block changes nothing)."""
    a, b = inputs.detach().float().flatten(1), outputs.detach().float().flatten(1)
    return float(F.cosine_similarity(a, b, dim=1, eps=1e-8).mean())


def output_change(reference: torch.Tensor, changed: torch.Tensor) -> float:
    """Relative squared error ``||changed - reference||^2 / ||reference||^2`` of the model's main output."""
    ref = reference.detach().float()
    return float((changed.detach().float() - ref).pow(2).sum() / ref.pow(2).sum().clamp_min(1e-12))


def _first(x: Any) -> torch.Tensor | None:
    if isinstance(x, torch.Tensor):
        return x
    if isinstance(x, tuple | list) and x and isinstance(x[0], torch.Tensor):
        return x[0]
    return None


def find_blocks(model: nn.Module, example_inputs: Any, patterns: tuple[str, ...] = ()) -> dict[str, bool]:
    """Removable blocks: name -> whether the block returns a tuple.

    Raises:
        ConfigError: ``patterns`` match no block whose output has its input's shape.
    """
    shapes: dict[str, tuple] = {}

    def hook(m, args, out, _n):
        x, y = _first(args), _first(out)
        if x is not None and y is not None:
            shapes[_n] = (x.shape == y.shape, isinstance(out, tuple))

    run_hooked(model.eval(), [example_inputs], post={
        mod: (lambda m, a, o, _n=name: hook(m, a, o, _n))
        for name, mod in model.named_modules() if name and any(True for _ in mod.parameters())})
    same = {n: t for n, (ok, t) in shapes.items() if ok}
    modules = dict(model.named_modules())
    if patterns:
        found = {n: t for n, t in same.items() if any(matches(n, modules[n], p) for p in patterns)}
        if not found:
            raise ConfigError(f"LayerPruning.candidates={list(patterns)} match no block whose output has its input's "
                              f"shape; such blocks are {sorted(same)[:10]}")
        return found
    in_lists = {f"{n}.{c}" if n else c for n, m in modules.items() if isinstance(m, nn.ModuleList | nn.Sequential)
                for c, _ in m.named_children()}
    listed = {n: t for n, t in same.items() if n in in_lists and not isinstance(modules[n], _LEAVES)}
    if listed:
        return listed
    return {n: t for n, t in same.items() if "." not in n and not isinstance(modules[n], _LEAVES)}


_LEAVES = (nn.Linear, nn.modules.conv._ConvNd, nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm,
           nn.Embedding, nn.MultiheadAttention)


def score_blocks(model: nn.Module, blocks: dict[str, bool], batches: list[Any], metric: str) -> dict[str, float]:
    """Removal cost of each block: ``1 - similarity`` ("cosine") or the model-output change ("output")."""
    model.eval()
    if metric == "cosine":
        sims: dict[str, list[float]] = {n: [] for n in blocks}
        run_hooked(model, batches, post={
            model.get_submodule(n): (lambda m, a, o, _n=n: sims[_n].append(block_similarity(_first(a), _first(o))))
            for n in blocks})
        return {n: 1.0 - sum(v) / len(v) for n, v in sims.items() if v}
    with torch.no_grad():
        refs = [first_tensor(call(model, inputs)) for inputs in batches]
        costs = {}
        for n, tup in blocks.items():
            old = model.get_submodule(n)
            model.set_submodule(n, Skip(tup))
            try:
                costs[n] = sum(output_change(r, first_tensor(call(model, i))) for r, i in zip(refs, batches,
                                                                                              strict=True))
            except (RuntimeError, ValueError):
                costs[n] = float("inf")
            finally:
                model.set_submodule(n, old)
    return costs


@handler(LayerPruning)
def apply_layers(model: nn.Module, config: LayerPruning, *, data: Any = None, example_inputs: Any = None,
                 select: Any = None, seed: int = 0) -> nn.Module:
    """Handler of ``st.prune(model, LayerPruning(...))``: score blocks, replace the cheapest by :class:`Skip`.

    Raises:
        DataError: neither data nor example_inputs was given.
        ConfigError: fewer candidate blocks than ``num_layers``, or ``candidates`` match no removable block.
        UnsupportedModelError: the model has no removable block at all (it is untouched), or it does not run
            with the blocks removed (it is restored).
    """
    if data is None and example_inputs is None:
        raise DataError("layer pruning scores blocks on data: pass data=<calibration batches> or example_inputs=")
    batches = list(iter_inputs(data, config.calibration_batches)) if data is not None else [example_inputs]
    example = example_inputs if example_inputs is not None else batches[0]
    was = model.training
    patterns = tuple(config.candidates) + tuple(select or ())
    blocks = find_blocks(model, example, patterns)
    if not blocks:
        raise UnsupportedModelError(f"{type(model).__name__} has no removable block (a member of an nn.ModuleList/"
                                    "nn.Sequential or a direct child whose output has its input's shape); LayerPruning "
                                    "left it untouched. Name removable blocks with candidates=[...]")
    if len(blocks) < config.num_layers:
        raise ConfigError(f"LayerPruning.num_layers={config.num_layers} but only {len(blocks)} removable blocks "
                          f"were found ({sorted(blocks)}); lower num_layers or name candidates=[...]")
    with torch.no_grad():
        shape = first_tensor(call(model.eval(), example)).shape
    costs = score_blocks(model, blocks, batches, config.metric)
    chosen = sorted(costs, key=lambda n: (costs[n], n))[:config.num_layers]
    removed = {n: model.get_submodule(n) for n in chosen}
    for n in chosen:
        model.set_submodule(n, Skip(blocks[n]))
    try:
        with torch.no_grad():
            got = first_tensor(call(model, example)).shape
        if got != shape:
            raise RuntimeError(f"output shape {tuple(got)} != {tuple(shape)}")
    except (RuntimeError, ValueError, StopIteration) as err:
        for n, old in removed.items():
            model.set_submodule(n, old)
        model.train(was)
        raise UnsupportedModelError(f"the model does not run without blocks {chosen} ({err}); it was restored. "
                                    "Name removable blocks with candidates=[...]") from None
    model.train(was)
    logger.info("layer pruning removed %s (costs %s)", chosen, {n: round(costs[n], 4) for n in chosen})
    layers = getattr(model.__dict__.get("config"), "num_hidden_layers", None)
    if isinstance(layers, int) and hasattr(type(model), "from_pretrained"):
        logger.warning("layer pruning: Skip modules stand in for %s and config.num_hidden_layers=%d still counts "
                       "them (the weight names number the layers), so from_pretrained would rebuild them with random "
                       "weights: save with st.save and reload with st.load onto the original model", chosen, layers)
    return model

