from dataclasses import dataclass
from typing import ClassVar, Literal

import pytest

from slimtorch.config import Config, check_range, register
from slimtorch.errors import ConfigError


@register("test", "toy")
@dataclass(frozen=True, kw_only=True)
class Toy(Config):
    ratio: float = 0.5
    mode: Literal["a", "b"] = "a"
    layers: tuple[str, ...] = ()
    limit: int | None = None

    def __post_init__(self):
        super().__post_init__()
        check_range("Toy", "ratio", self.ratio, 0, 1)


@register("test", "renamed")
@dataclass(frozen=True, kw_only=True)
class Renamed(Config):
    ratio: float = 0.5
    removed: ClassVar[dict[str, str]] = {"amount": "use ratio= (a fraction 0-1)"}


def test_constructor_and_from_dict_answer_unknown_and_removed_fields_with_config_errors():
    for build in (lambda kw: Renamed(**kw), Renamed.from_dict):
        with pytest.raises(ConfigError, match="Renamed: 'amount' was removed; use ratio= "):
            build({"amount": 3})
        with pytest.raises(ConfigError, match="unknown field 'rato' \\(did you mean 'ratio'\\?\\); fields are"):
            build({"rato": 0.2})
    assert Renamed(ratio=0.1).ratio == 0.1


def test_round_trip_through_plain_values():
    cfg = Toy(ratio=0.25, mode="b", layers=("fc1", "fc2"), limit=3)
    values = cfg.to_dict()
    assert values == {"method": "toy", "ratio": 0.25, "mode": "b", "layers": ["fc1", "fc2"], "limit": 3}
    assert Toy.from_dict(values) == cfg


def test_unknown_key_suggests_the_closest_field():
    with pytest.raises(ConfigError, match="unknown field 'ratoi'.*did you mean 'ratio'"):
        Toy.from_dict({"ratoi": 0.1})


def test_out_of_range_names_field_value_and_range():
    with pytest.raises(ConfigError, match=r"Toy.ratio=1.5 is out of range; allowed: a number in \[0, 1\]"):
        Toy(ratio=1.5)


def test_literal_choice_is_checked_with_suggestion():
    with pytest.raises(ConfigError, match="Toy.mode='c' is not allowed"):
        Toy(mode="c")


def test_wrong_type_is_rejected():
    with pytest.raises(ConfigError, match="Toy.limit='3' has the wrong type"):
        Toy(limit="3")
    with pytest.raises(ConfigError, match="Toy.ratio=True has the wrong type"):
        Toy(ratio=True)
