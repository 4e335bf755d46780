"""Recipes: an ordered list of stage configs (plus export targets), to and from YAML. Never executes code.

A recipe file looks like::

    stages:
      - prune:    {method: structured, ratio: 0.5, importance: taylor}
      - finetune: {epochs: 2, distill: true}
      - quantize: {method: static, bits: 8}
    export: [safetensors, onnx]

Each stage maps 1:1 onto a registered config dataclass (``slimtorch.config.REGISTRY``), so a recipe written
from Python configs reads back identically.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from slimtorch.config import REGISTRY, Config, suggest
from slimtorch.errors import ConfigError

EXPORTS = ("safetensors", "onnx")
STAGES = ("prune", "decompose", "quantize", "finetune")


@dataclass(frozen=True)
class Recipe:
    """Stages to run in order, and the artifacts to write at the end."""

    stages: tuple[Config, ...]
    export: tuple[str, ...] = ("safetensors",)
    name: str = field(default="", compare=False)
    description: str = field(default="", compare=False)

    def to_dict(self) -> dict[str, Any]:
        """Plain values, as written to YAML."""
        out: dict[str, Any] = {}
        if self.name:
            out["name"] = self.name
        if self.description:
            out["description"] = self.description
        out["stages"] = [{cfg.stage: cfg.to_dict()} for cfg in self.stages]
        out["export"] = list(self.export)
        return out

    def to_yaml(self) -> str:
        """The recipe as YAML text."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def _default_method(stage: str) -> str | None:
    methods = REGISTRY.get(stage, {})
    return next(iter(methods)) if len(methods) == 1 else None


def stage_from_dict(entry: Any, index: int) -> Config:
    """Build one stage config from ``{stage_name: {method: ..., field: value}}``.

    Raises:
        ConfigError: an unknown stage or method, or a bad field, naming the stage number.
    """
    where = f"stage {index + 1}"
    if not isinstance(entry, dict) or len(entry) != 1:
        raise ConfigError(f"{where}: each stage must be a one-key mapping like '- prune: {{...}}', got {entry!r}")
    (stage, values), = entry.items()
    if stage not in REGISTRY:
        raise ConfigError(f"{where}: unknown stage {stage!r}{suggest(stage, STAGES)}; stages are {list(STAGES)}")
    values = {} if values is None else values
    if not isinstance(values, dict):
        raise ConfigError(f"{where} ({stage}): expected a mapping of fields, got {values!r}")
    methods = REGISTRY[stage]
    only = _default_method(stage)
    if only is not None and "method" in {f.name for f in dataclasses.fields(methods[only])}:
        # a single-class stage whose config has its own ``method`` field (e.g. decompose: svd | tucker)
        return methods[only].from_dict(values, where=f"{where} ({stage})")
    method = values.get("method", only)
    if method not in methods:
        raise ConfigError(
            f"{where} ({stage}): method={method!r} is not allowed{suggest(str(method), methods)}; "
            f"choose one of {sorted(methods)}"
        )
    return methods[method].from_dict(values, where=f"{where} ({stage}.{method})")


def _check_export(export: Any, name: str) -> None:
    if not isinstance(export, list | tuple):
        raise ConfigError(f"recipe {name}: 'export' must be a list of {list(EXPORTS)}, got {export!r}")
    for target in export:
        if target not in EXPORTS:
            raise ConfigError(f"recipe {name}: export {target!r} is not allowed{suggest(str(target), EXPORTS)}; "
                              f"choose from {list(EXPORTS)}")


def recipe_from_dict(values: Any, name: str = "") -> Recipe:
    """Validate and build a :class:`Recipe` from plain values (what YAML gives)."""
    if not isinstance(values, dict):
        raise ConfigError(f"recipe {name}: the top level must be a mapping with 'stages'")
    unknown = set(values) - {"stages", "export", "name", "description"}
    if unknown:
        key = sorted(unknown)[0]
        allowed = ["stages", "export", "name", "description"]
        raise ConfigError(f"recipe {name}: unknown key {key!r}{suggest(key, allowed)}; keys are {allowed}")
    stages = values.get("stages")
    if not isinstance(stages, list) or not stages:
        raise ConfigError(f"recipe {name}: 'stages' must be a non-empty list")
    export = values.get("export", ["safetensors"])
    if isinstance(export, str):
        export = [export]
    _check_export(export, name)
    return Recipe(
        stages=tuple(stage_from_dict(s, i) for i, s in enumerate(stages)),
        export=tuple(export),
        name=str(values.get("name", name)),
        description=str(values.get("description", "")),
    )


def builtin_names() -> list[str]:
    """Names of the recipes that ship with slimtorch (use as ``builtin:NAME``)."""
    folder = resources.files("slimtorch") / "recipes"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))


def load_recipe(path: str | os.PathLike) -> Recipe:
    """Read and validate a recipe from a YAML file, or ``builtin:NAME`` for a bundled one.

    Raises:
        ConfigError: a missing file, invalid YAML, or any invalid stage, before anything runs.

    Example:
        >>> import slimtorch as st
        >>> recipe = st.load_recipe("builtin:prune-quantize")
        >>> [s.stage for s in recipe.stages]
        ['prune', 'finetune', 'quantize']
    """
    text_path = str(path)
    if text_path.startswith("builtin:"):
        name = text_path[len("builtin:"):]
        if name not in builtin_names():
            raise ConfigError(f"no built-in recipe {name!r}{suggest(name, builtin_names())}; "
                              f"built-in recipes are {builtin_names()}")
        text = (resources.files("slimtorch") / "recipes" / f"{name}.yaml").read_text()
    else:
        file = Path(path)
        if file.is_dir():
            raise ConfigError(f"recipe {file} is a folder; give a YAML file or builtin:NAME ({builtin_names()})")
        if not file.is_file():
            raise ConfigError(f"recipe file {file} does not exist; give a YAML file or builtin:NAME "
                              f"({builtin_names()})")
        name = file.stem
        text = file.read_text()
    try:
        values = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"recipe {name}: invalid YAML ({err})") from None
    return recipe_from_dict(values, name)


def as_recipe(recipe: Recipe | dict | list | tuple | str | os.PathLike | Config) -> Recipe:
    """Accept a Recipe, a dict (the YAML's plain values), a list of configs, one config or a path /
    ``builtin:NAME``, and return a validated Recipe.

    Raises:
        ConfigError: anything else, or an invalid recipe (a bad key names the close match).
    """
    if isinstance(recipe, Recipe):
        bad = [s for s in recipe.stages if not isinstance(s, Config)]
        if bad or not recipe.stages:
            raise ConfigError(f"recipe {recipe.name}: Recipe.stages must hold configs (st.StaticQuant(), ...), "
                              f"got {bad[:1] or recipe.stages!r}")
        _check_export(recipe.export, recipe.name)
        return recipe
    if isinstance(recipe, Config):
        return Recipe(stages=(recipe,))
    if isinstance(recipe, dict):
        return recipe_from_dict(recipe, str(recipe.get("name", "")))
    if isinstance(recipe, list | tuple):
        bad = [s for s in recipe if not isinstance(s, Config)]
        if bad or not recipe:
            raise ConfigError(f"a recipe list must hold configs (st.StaticQuant(), ...), got {bad[:1] or recipe}")
        return Recipe(stages=tuple(recipe))
    if isinstance(recipe, str | os.PathLike):
        return load_recipe(recipe)
    raise ConfigError(f"a recipe must be a Recipe, a dict like the YAML, a list of configs, a YAML path or "
                      f"'builtin:NAME', got {type(recipe).__name__}")
