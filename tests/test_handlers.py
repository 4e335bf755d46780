"""The handler registry and ``handlers.apply``: what every verb and every recipe stage goes through."""

import dataclasses

import pytest
import torch
from torch import nn

import slimtorch as st
from slimtorch.config import Config
from slimtorch.handlers import HANDLERS, apply, handler


@dataclasses.dataclass(frozen=True)
class _Scale(Config):
    """A config of the quantize stage (not filed in the recipe registry) whose handler scales every weight."""

    stage = "quantize"
    method = "scale-test"
    factor: float = 2.0


def test_a_registered_handler_runs_on_the_model_in_place():
    @handler(_Scale)
    def scale(model, config, *, data=None, example_inputs=None, select=None, seed=0):
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(config.factor)

    try:
        model = nn.Linear(3, 2)
        before = model.weight.detach().clone()
        assert apply("quantize", model, _Scale(factor=3.0)) is model
        torch.testing.assert_close(model.weight, 3 * before)
    finally:
        del HANDLERS[_Scale]


def test_wrong_stage_no_handler_and_non_module_are_refused():
    with pytest.raises(st.ConfigError, match=r"prune\(\) takes one of .*UnstructuredPruning.*got StaticQuant"):
        apply("prune", nn.Linear(3, 2), st.StaticQuant())
    with pytest.raises(st.ConfigError, match="_Scale has no handler registered"):
        apply("quantize", nn.Linear(3, 2), _Scale())
    with pytest.raises(st.UnsupportedModelError, match="needs a torch.nn.Module, got str"):
        apply("quantize", "model", st.DynamicQuant())


def test_the_verbs_and_the_recipe_stages_share_one_registry():
    # every slimtorch config a recipe can name has its handler, except fine-tuning (run by the pipeline itself);
    # configs that other tests file in the registry are not slimtorch's
    from slimtorch.config import REGISTRY

    missing = [cls.__name__ for stage, methods in REGISTRY.items() if stage != "finetune"
               for cls in methods.values() if cls.__module__.startswith("slimtorch.") and cls not in HANDLERS]
    assert not missing
