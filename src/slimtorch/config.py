"""The frozen config base: validation helpers, ``to_dict``/``from_dict`` and the stage/method registry.

Every method of every family is one frozen, keyword-only dataclass that subclasses :class:`Config` and
registers itself under a recipe stage (``prune``, ``decompose``, ``quantize``, ``finetune``) and a method
name. Recipes, the CLI and the Python API all go through this one table, so they cannot drift apart.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import types
import typing
from collections.abc import Iterable
from typing import Any, ClassVar, Literal, TypeVar, get_args, get_origin

from slimtorch.errors import ConfigError

C = TypeVar("C", bound="Config")

#: stage name -> method name -> config class
REGISTRY: dict[str, dict[str, type[Config]]] = {}


def register(stage: str, method: str):
    """Class decorator: file a config class under ``stage`` and ``method`` for recipes and the CLI; its constructor
    then answers an unknown or removed keyword with a ``ConfigError`` (see :func:`check_fields`) rather than
    Python's ``TypeError``."""

    def wrap(cls: type[C]) -> type[C]:
        cls.stage = stage
        cls.method = method
        REGISTRY.setdefault(stage, {})[method] = cls
        init = cls.__init__

        @functools.wraps(init)
        def checked_init(self, *args: Any, **kwargs: Any) -> None:
            check_fields(type(self), kwargs)
            init(self, *args, **kwargs)

        cls.__init__ = checked_init
        return cls

    return wrap


def check_fields(cls: type[Config], values: Iterable[str], where: str = "") -> None:
    """Raise ConfigError for a key of ``values`` that is not a field of ``cls``: a removed field names what
    replaced it (``cls.removed``), any other the closest field."""
    names = [f.name for f in dataclasses.fields(cls)]
    for key in values:
        if key in names:
            continue
        if key in cls.removed:
            raise ConfigError(f"{where or cls.__name__}: {key!r} was removed; {cls.removed[key]}")
        raise ConfigError(f"{where or cls.__name__}: unknown field {key!r}{suggest(key, [*names, *cls.removed])}; "
                          f"fields are {names}")


def suggest(word: str, allowed: Iterable[str]) -> str:
    """Return " (did you mean 'x'?)" for the closest of ``allowed``, or an empty string."""
    close = difflib.get_close_matches(str(word), [str(a) for a in allowed], n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def check_choice(owner: str, field: str, value: Any, allowed: Iterable[Any]) -> None:
    """Raise ConfigError unless ``value`` is one of ``allowed``."""
    allowed = list(allowed)
    if value not in allowed:
        raise ConfigError(
            f"{owner}.{field}={value!r} is not allowed; choose one of {allowed}{suggest(value, allowed)}"
        )


def check_range(
    owner: str,
    field: str,
    value: Any,
    lo: float | None = None,
    hi: float | None = None,
    *,
    lo_open: bool = False,
    hi_open: bool = False,
    integer: bool = False,
) -> None:
    """Raise ConfigError unless ``value`` is a number in the interval [lo, hi] (or open ends)."""
    kind = "an integer" if integer else "a number"
    ok_type = isinstance(value, int) if integer else isinstance(value, int | float)
    if isinstance(value, bool) or not ok_type:
        raise ConfigError(f"{owner}.{field}={value!r} must be {kind}")
    bad_lo = lo is not None and (value <= lo if lo_open else value < lo)
    bad_hi = hi is not None and (value >= hi if hi_open else value > hi)
    if bad_lo or bad_hi:
        left = "(" if lo_open else "["
        right = ")" if hi_open else "]"
        span = f"{left}{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}{right}"
        raise ConfigError(f"{owner}.{field}={value!r} is out of range; allowed: {kind} in {span}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config:
    """Base of every method config. Subclasses validate their fields in ``__post_init__``."""

    stage: ClassVar[str] = ""
    method: ClassVar[str] = ""
    #: fields that older versions had: name -> what to write instead (the error message's second half)
    removed: ClassVar[dict[str, str]] = {}
    #: the recipe runner passes its teacher (a frozen copy of the model as the recipe found it) to this
    #: config's handler as ``teacher=``
    takes_teacher: ClassVar[bool] = False

    def __post_init__(self) -> None:
        _check_types(self)

    def requires_data(self) -> bool:
        """True when applying this config needs data (calibration batches or a training loader)."""
        return False

    def to_dict(self) -> dict[str, Any]:
        """Return the fields as plain JSON/YAML values, with ``method`` first."""
        out: dict[str, Any] = {"method": self.method}  # a field named ``method`` overrides this key
        for f in dataclasses.fields(self):
            out[f.name] = _plain(getattr(self, f.name))
        return out

    @classmethod
    def from_dict(cls: type[C], values: dict[str, Any], *, where: str = "") -> C:
        """Build the config from plain values; unknown keys are rejected with the closest field suggested.

        Raises:
            ConfigError: an unknown key, or a value the dataclass rejects.
        """
        if not isinstance(values, dict):
            raise ConfigError(f"{where or cls.__name__}: expected a mapping of fields, got {values!r}")
        if "method" not in (f.name for f in dataclasses.fields(cls)):
            values = {k: v for k, v in values.items() if k != "method"}
        check_fields(cls, values, where)
        hints = typing.get_type_hints(cls)
        coerced = {k: _from_plain(v, hints.get(k)) for k, v in values.items()}
        try:
            return cls(**coerced)
        except ConfigError as err:
            raise ConfigError(f"{where}: {err}" if where else str(err)) from None


def _plain(value: Any) -> Any:
    if isinstance(value, Config):
        return value.to_dict()
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


def _from_plain(value: Any, hint: Any) -> Any:
    """Turn YAML lists back into the tuples the frozen dataclasses hold."""
    if isinstance(value, list) and hint is not None:
        origin = get_origin(hint)
        if origin is tuple or any(get_origin(a) is tuple for a in get_args(hint)):
            return tuple(value)
    return value


def _check_types(cfg: Config) -> None:
    """Reject values whose type does not match a field's simple annotation (int, float, str, bool, Literal)."""
    hints = typing.get_type_hints(type(cfg))
    owner = type(cfg).__name__
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        hint = hints.get(f.name)
        if hint is None or _matches(value, hint):
            continue
        if get_origin(hint) is Literal:
            check_choice(owner, f.name, value, get_args(hint))
        raise ConfigError(f"{owner}.{f.name}={value!r} has the wrong type; expected {_describe(hint)}")


def _matches(value: Any, hint: Any) -> bool:
    origin = get_origin(hint)
    if hint is Any:
        return True
    if origin is Literal:
        return value in get_args(hint)
    if origin in (types.UnionType, typing.Union):
        return any(_matches(value, a) for a in get_args(hint))
    if hint is type(None):
        return value is None
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin is not None:
        hint = origin
    if isinstance(hint, type):
        return isinstance(value, hint)
    return True


def _describe(hint: Any) -> str:
    if get_origin(hint) is Literal:
        return " | ".join(repr(a) for a in get_args(hint))
    if get_origin(hint) in (types.UnionType, typing.Union):
        return " | ".join(_describe(a) for a in get_args(hint))
    return getattr(hint, "__name__", str(hint))
