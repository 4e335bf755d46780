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
        if not name or not isinstance(module, tuple(types)):
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
            names = [n for n, m in model.named_modules() if n and isinstance(m, tuple(types))][:8]
            raise ConfigError(f"include pattern(s) {missing} matched no layer; layers are named like {names}")
    return chosen


def last_linear(model: nn.Module) -> str | None:
    """Name of the last ``nn.Linear`` registered in the model (usually the classifier head), or None."""
    name = None
    for n, m in model.named_modules():
        if isinstance(m, nn.Linear):
            name = n
    return name
