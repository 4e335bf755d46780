"""The saved model's module tree, and the check that a model passed to ``slimtorch.load`` has the same one.

``slimtorch.save`` records every module as (qualified name, class); ``slimtorch.load`` compares that tree with
the model it is given, allowing exactly the changes slimtorch makes to a model:

- a module replaced by a slimtorch layer (quantized, low-rank, binary, sparse, ``Skip`` for a block removed by
  layer pruning) or by ``nn.Identity`` (a BatchNorm folded into its conv, a ReLU fused into its kernel): the
  manifest records the replacement at that name, and whatever the model has there (and below it) is rebuilt;
- pruned widths: the same class at the same name, with smaller tensors (checked by :func:`check_tensors`).

Anything else means the model is not the architecture the file was saved from.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn
from torch.nn.modules.lazy import LazyModuleMixin
from torch.nn.parameter import is_lazy

from slimtorch.errors import ArtifactError

FIX = "build the same architecture the model was saved from (the uncompressed original) and pass it as model="


def class_name(cls: type) -> str:
    """The qualified name of a class, e.g. ``torch.nn.modules.linear.Linear``."""
    return f"{cls.__module__}.{cls.__qualname__}"


def module_tree(model: nn.Module) -> dict[str, list]:
    """The compact module tree stored in the manifest: ``{"types": [class names], "modules": [[name, index]]}``,
    one row per module in ``named_modules()`` order, each class name stored once."""
    types: dict[str, int] = {}
    rows = []
    for name, module in model.named_modules():
        rows.append([name, types.setdefault(class_name(type(module)), len(types))])
    return {"types": list(types), "modules": rows}


def _class_of(module: nn.Module) -> str:
    # a lazy module (nn.LazyLinear) becomes its ``cls_to_become`` (nn.Linear) at its first forward
    become = getattr(module, "cls_to_become", None) if isinstance(module, LazyModuleMixin) else None
    return class_name(become or type(module))


def tensor_shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    """Shape of every tensor in ``model.state_dict()`` (lazy, not yet shaped parameters left out)."""
    return {k: tuple(v.shape) for k, v in model.state_dict().items()
            if isinstance(v, torch.Tensor) and not is_lazy(v)}


def _same_class(saved: str, have: str) -> bool:
    # a class defined in a script or notebook is ``__main__.Net`` there and ``mymodels.Net`` once imported
    if saved == have:
        return True
    s_mod, _, s_name = saved.rpartition(".")
    h_mod, _, h_name = have.rpartition(".")
    return "__main__" in (s_mod, h_mod) and s_name.rpartition(".")[2] == h_name.rpartition(".")[2]


def _short(saved: str | None, have: str | None) -> tuple[str, str]:
    short = [t.rpartition(".")[2] if t else t for t in (saved, have)]
    if short[0] == short[1]:
        return saved, have
    return short[0], short[1]


def _difference(name: str, saved: str | None, have: str | None) -> ArtifactError:
    saved, have = _short(saved, have)
    where = f"`{name}`" if name else "the root module"
    what = (f"saved {saved}, model has no such module" if have is None
            else f"the saved model has no such module, model has {have}" if saved is None
            else f"saved {saved}, model has {have}")
    return ArtifactError(f"the model does not match the saved artifact: first difference at {where} ({what}); {FIX}")


def _below_any(roots: set[str]) -> Callable[[str], bool]:
    """A test of whether a module name lies strictly below one of ``roots``, in time linear in the name's length
    (a trie of the roots' dotted parts; a name in a crafted file may be megabytes long)."""
    trie: dict = {}
    for root in roots:
        node = trie
        for part in root.split(".") if root else []:
            node = node.setdefault(part, {})
        node[None] = True  # a root ends here

    def below(name: str) -> bool:
        node = trie
        for part in name.split(".") if name else []:
            if None in node:
                return True
            node = node.get(part)
            if node is None:
                return False
        return False

    return below


def check_tree(tree: dict[str, list], model: nn.Module, replaced: set[str]) -> None:
    """Refuse a model whose module tree differs from the saved one other than by slimtorch's changes.

    Args:
        tree: the manifest's ``tree`` (see :func:`module_tree`), already validated.
        model: the architecture passed to ``slimtorch.load``.
        replaced: names the manifest records as replaced by a slimtorch layer or ``nn.Identity``; the model may
            hold any module there, and what lies below them is not compared.

    Raises:
        ArtifactError: naming the first module whose name or class differs, with both classes.
    """
    have = {name: _class_of(m) for name, m in model.named_modules()}
    hidden = _below_any(replaced)
    saved_names = set()
    for name, index in tree["modules"]:
        saved_names.add(name)
        saved = tree["types"][index]
        if hidden(name):
            continue
        if name not in have:
            raise _difference(name, saved, None)
        if name not in replaced and not _same_class(saved, have[name]):
            raise _difference(name, saved, have[name])
    for name, cls in have.items():
        if name not in saved_names and not hidden(name):
            raise _difference(name, None, cls)


def _fits(saved: Iterable[int], bound: Iterable[int]) -> bool:
    saved, bound = tuple(saved), tuple(bound)
    return len(saved) == len(bound) and all(s <= b for s, b in zip(saved, bound, strict=True))


def check_tensors(
    saved: dict[str, tuple[int, ...]],
    model: nn.Module,
    before: dict[str, tuple[int, ...]],
    kept_class: set[str],
    rebuilt: set[str],
) -> None:
    """Refuse saved tensors that the model (with the manifest's modules rebuilt) cannot hold.

    Args:
        saved: every tensor of the file (sparse ones decoded to their dense shape), name -> shape.
        model: the architecture after the manifest's modules were rebuilt.
        before: the model's tensor shapes before anything was rebuilt.
        kept_class: module names whose class the rebuild did not change (pruned widths may only shrink there).
        rebuilt: module names the manifest describes: their tensors are built with exactly the saved shapes.

    Raises:
        ArtifactError: naming the tensor that is missing from the file or the model, or whose shape no
            slimtorch change explains.
    """
    current = tensor_shapes(model)
    stray = [name for name in saved if name not in current]
    if stray:
        raise ArtifactError(f"the file holds tensor {stray[0]!r} {list(saved[stray[0]])} but the model has no such "
                            f"parameter or buffer ({len(stray)} in all); {FIX}")
    for name, have in current.items():  # in the model's order, so that the first difference is named
        if name not in saved:
            raise ArtifactError(f"the model's tensor {name!r} is not in the file; {FIX}")
        shape, owner = saved[name], name.rpartition(".")[0]
        if owner in rebuilt and shape != have:
            raise ArtifactError(f"tensor {name!r} is {list(shape)} in the file but its module {owner!r}, rebuilt "
                                f"from the manifest, holds {list(have)}; the file is corrupted: save the model again")
        bound = before.get(name, have) if owner in kept_class else have
        if not _fits(shape, have) or not _fits(shape, bound):
            raise ArtifactError(f"tensor {name!r} is {list(shape)} in the file but {list(bound)} in the model, and "
                                f"slimtorch only ever shrinks a tensor; {FIX}")
