"""The papers' training recipes as preset files: `recipes/<name>.yaml`, TrainConfig fields plus `method_args`.

Each file cites, line by line, the table or section its values come from (and says where the paper is silent).
`recipe_config("imagenet100", epochs=10)` is the recipe with the given fields replaced; `method_args` merge key by
key, the overrides winning. The recipe's method_args are the parameters of the recipe's `method`: an override that
picks another method drops them (another method's parameter of the same name may mean something else, e.g. SOP's
memory_size), keeping only the override's own method_args.
"""
from __future__ import annotations

import dataclasses
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from ..config import ConfigError, TrainConfig, coerce_fields

_DIR = resources.files(__name__)
# Method parameters that describe the data recipe's views, not a method's own objective: they carry over when an
# override trains another method with the recipe (ReSA's ImageNet views blur with p = 0.5 as OSESSL's do).
VIEW_ARGS = ("blur_prob",)
RECIPES: tuple[str, ...] = tuple(sorted(p.name[:-len(".yaml")] for p in _DIR.iterdir() if p.name.endswith(".yaml")))


def _read(name_or_path: str | Path) -> tuple[str, str]:
    """(label, YAML text) of a packaged recipe name or a path to a user's own file."""
    key = str(name_or_path)
    if key in RECIPES:
        return key, (_DIR / f"{key}.yaml").read_text(encoding="utf-8")
    path = Path(key).expanduser()
    if path.is_file():
        return key, path.read_text(encoding="utf-8")
    if path.suffix in (".yaml", ".yml") or len(path.parts) > 1:
        raise ConfigError(f"recipe file {key!r} not found")
    raise ConfigError(f"unknown recipe {key!r}; available: {', '.join(RECIPES)} (or a path to a .yaml file)")


def load_recipe(name_or_path: str | Path) -> dict[str, Any]:
    """The TrainConfig fields a recipe sets, typed (`coerce_fields`); unknown fields are a one-line ConfigError."""
    label, text = _read(name_or_path)
    try:
        values = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"recipe {label}: not valid YAML ({' '.join(str(e).split())})") from None
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise ConfigError(f"recipe {label}: expected a mapping of config fields, got {type(values).__name__}")
    try:
        return coerce_fields(TrainConfig, values, "config")
    except ConfigError as e:
        raise ConfigError(f"recipe {label}: {e}") from None


def recipe_config(name_or_path: str | Path, **overrides: Any) -> TrainConfig:
    """TrainConfig from a recipe, `overrides` (the flags a user set) winning; records `recipe=<name>`.

    The merged method_args are checked against the method's parameters here, so a misspelt one in a recipe or a
    flag fails before any data is loaded."""
    values = load_recipe(name_or_path)
    overrides = coerce_fields(TrainConfig, overrides, "config")
    recipe_method = values.get("method", TrainConfig.method)
    method = overrides.get("method", recipe_method)
    base_args = values.get("method_args", {})
    if method != recipe_method:  # another method keeps only the recipe's view settings it also has
        from ..methods import METHODS
        names = {f.name for f in dataclasses.fields(METHODS[method.lower()].Params)} if method.lower() in METHODS else set()
        base_args = {k: v for k, v in base_args.items() if k in VIEW_ARGS and k in names}
    method_args = {**base_args, **overrides.pop("method_args", {})}
    values.update(overrides)
    values["method_args"] = method_args
    values["recipe"] = str(name_or_path)
    from ..methods import METHODS  # imports torch: only when a config is built
    if method.lower() in METHODS:
        from ..config import resolve_params
        resolve_params(METHODS[method.lower()].Params, method_args, method)
    return TrainConfig(**values)


__all__ = ["RECIPES", "load_recipe", "recipe_config"]
