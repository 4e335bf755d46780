"""Which layers a verb touches: include/exclude patterns shared by every verb.

A pattern is one of:
- a glob on the module's qualified name (``"layer1.*"``, ``"*.fc"``);
- a regular expression on the name, prefixed with ``"re:"`` (``"re:blocks\\.[0-3]\\..*"``);
- a module type given by its class name (``"Linear"``, ``"Conv2d"``) or the class itself.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Sequence

from torch import nn

from slimtorch.errors import ConfigError
from slimtorch.layer_kinds import is_transposed_linear, layer_kind, weight_readers

Pattern = str | type


def matches(name: str, module: nn.Module, pattern: Pattern) -> bool:
    """True when the module called ``name`` matches one include/exclude ``pattern``."""
    if isinstance(pattern, type):
        return isinstance(module, pattern)
    if pattern.startswith("re:"):
        try:
            return re.fullmatch(pattern[3:], name) is not None
        except re.error as err:
            raise ConfigError(f"bad regular expression {pattern!r}: {err}") from None
    if any(cls.__name__ == pattern for cls in type(module).__mro__):
        return True
    return fnmatch.fnmatchcase(name, pattern)


def select(
    model: nn.Module,
    types: Sequence[type[nn.Module]],
    include: Iterable[Pattern] | None = None,
    exclude: Iterable[Pattern] = (),
) -> list[tuple[str, nn.Module]]:
    """Return ``(name, module)`` for the modules of ``types`` that match ``include`` and no ``exclude``.

    Args:
        model: the model to search.
        types: module classes a verb can handle; others are never returned.
        include: patterns a module must match (any); None means every module of ``types``.
        exclude: patterns that remove a module.

    Raises:
        ConfigError: an include pattern matched no module (a likely typo), naming some real layer names.
    """
    include = None if include is None else list(include)
    exclude = list(exclude)
    chosen = []
    hit = set()
    for name, module in model.named_modules():
        if not name or not _is_a(module, types):
            continue
        if include is not None:
            found = [p for p in include if matches(name, module, p)]
            if not found:
                continue
            hit.update(map(str, found))
        if any(matches(name, module, p) for p in exclude):
            continue
        chosen.append((name, module))
    if include:
        missing = [p for p in include if str(p) not in hit]
        if missing:
            names = [n for n, m in model.named_modules() if n and _is_a(m, types)][:8]
            raise ConfigError(f"include pattern(s) {missing} matched no layer; layers are named like {names}")
    return chosen


def _is_a(module: nn.Module, types: Sequence[type[nn.Module]]) -> bool:
    """``isinstance`` over ``types``, with GPT-2's transposed ``Conv1D`` counted as an ``nn.Linear``."""
    return isinstance(module, tuple(types)) or (nn.Linear in types and is_transposed_linear(module))


def swappable(
    model: nn.Module,
    types: Sequence[type[nn.Module]],
    include: Iterable[Pattern] | None = None,
    exclude: Iterable[Pattern] = (),
) -> tuple[list[tuple[str, nn.Module]], dict[str, str]]:
    """:func:`select` for families that replace layers: layers whose ``forward`` slimtorch cannot reproduce
    (subclasses with a ``forward`` of their own, see :mod:`slimtorch.layer_kinds`) and layers whose parent
    reads their ``.weight`` in its ``forward`` (:func:`slimtorch.layer_kinds.weight_readers`) are set aside.

    Returns:
        ``(chosen, skipped)``: the layers to replace, and the set-aside layer names mapped to the reason.
    """
    chosen, skipped = [], {}
    readers = weight_readers(model)
    for name, module in select(model, types, include, exclude):
        if name in readers:
            skipped[name] = readers[name]
        elif (kind := layer_kind(module)).kind == "unknown":
            skipped[name] = kind.reason
        else:
            chosen.append((name, module))
    return chosen, skipped


def last_linear(model: nn.Module) -> str | None:
    """Name of the last ``nn.Linear`` (or GPT-2 ``Conv1D``) registered in the model (usually the classifier
    head), or None."""
    name = None
    for n, m in model.named_modules():
        if _is_a(m, [nn.Linear]):
            name = n
    return name
