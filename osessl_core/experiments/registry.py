"""What the method registry says, for notebooks: the registered names, their parameters and effective values."""
from __future__ import annotations

from dataclasses import fields

from ..config import TrainConfig
from .paper import paper_rows


def methods() -> list[str]:
    """The registered method names, in the registry's order."""
    from ..methods import METHODS
    return list(METHODS)


def _params_class(method: str):
    from ..methods import METHODS
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; registered: {sorted(METHODS)}")
    return METHODS[method].Params


def method_param_names(method: str) -> set[str]:
    return {f.name for f in fields(_params_class(method))}


def param_value(cfg: TrainConfig, name: str):
    """The effective value of a method parameter or TrainConfig field in `cfg` (defaults filled in; None if the
    method has no such parameter)."""
    if name in cfg.method_args:
        return cfg.method_args[name]
    if hasattr(cfg, name):
        return getattr(cfg, name)
    return getattr(_params_class(cfg.method)(**cfg.method_args), name, None)


def paper_methods(table_name: str) -> list[str]:
    """The registered methods that the paper reports in `table_name`, in the paper's order."""
    registered = set(methods())
    return [m for m in paper_rows(table_name) if m in registered]
