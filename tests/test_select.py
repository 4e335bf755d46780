import pytest
from torch import nn

from slimtorch.errors import ConfigError
from slimtorch.select import last_linear, select


def _model():
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4, 8), nn.Linear(8, 2))


def test_types_globs_regex_and_exclude():
    m = _model()
    assert [n for n, _ in select(m, [nn.Linear, nn.Conv2d])] == ["0", "3", "4"]
    assert [n for n, _ in select(m, [nn.Linear, nn.Conv2d], include=["Linear"])] == ["3", "4"]
    assert [n for n, _ in select(m, [nn.Linear, nn.Conv2d], include=["re:[03]"])] == ["0", "3"]
    assert [n for n, _ in select(m, [nn.Linear, nn.Conv2d], exclude=["4", nn.Conv2d])] == ["3"]


def test_include_that_matches_nothing_is_an_error():
    with pytest.raises(ConfigError, match="matched no layer"):
        select(_model(), [nn.Linear], include=["fc*"])


def test_last_linear_is_the_head():
    assert last_linear(_model()) == "4"
