"""Which TrainConfig a notebook trains: the paper recipe (TrainConfig's defaults) or the smoke budget, and the
resumable run directory each config trains in."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from ..config import TrainConfig
from .paths import resolve_path
from .registry import method_param_names

# A run that finishes in seconds on a 2-core CPU on real CIFAR data: it shows the pipeline works, nothing more.
SMOKE_BUDGET: dict[str, Any] = dict(
    subset=256, width=8, proj_hidden=64, proj_out=32, epochs=1, batch_size=64, warmup_epochs=0.0,
    eval_test_subset=200, linear_epochs=5, device="cpu", log_every=1)
SMOKE_METHOD_ARGS: dict[str, Any] = {"memory_size": 64}  # given to every method whose parameters have the field
# Smoke sizes for the figure and analysis notebooks.
SMOKE_EMBED = dict(points=150, tsne_iter=300, umap_epochs=30)
# The quickstart notebook's smoke budget, passed to run_quickstart (in the quickstart's own budget format).
SMOKE_QUICKSTART = dict(epochs=1, batch_size=64, width=8, subset=256, eval_test_subset=200,
                        embed_points=SMOKE_EMBED["points"], proj_hidden=64, proj_out=32, warmup_epochs=0.0)
# The figure notebooks' smoke runs (t-SNE/UMAP, k-means per method) check their pipeline on two methods; every
# registered method's training, resume and evaluation are tested by tests/test_train.py's per-method CLI test.
SMOKE_METHODS = ("resa", "osessl")
# TrainConfig fields that change how a run executes or is evaluated, not what it learns: left out of the run
# directory's name, so that e.g. re-evaluating with a linear probe reuses the same checkpoint.
# The batch size is kept in the name (a notebook run's global batch is its batch_size).
EXECUTION_FIELDS = TrainConfig.EXECUTION - {"batch_size"}


def smoke_overrides(method: str | None = None) -> dict[str, Any]:
    """TrainConfig fields for a smoke run (plus `method_args` when `method` is given)."""
    out = dict(SMOKE_BUDGET)
    if method is not None:
        names = method_param_names(method)
        out["method_args"] = {k: v for k, v in SMOKE_METHOD_ARGS.items() if k in names}
    return out


def train_config(smoke: bool, method: str = "osessl", method_args: dict | None = None, **overrides) -> TrainConfig:
    """The paper recipe (TrainConfig's defaults), or the smoke budget, with `overrides` on top.

    Overrides that are None are ignored, so a notebook parameter left at None means "the recipe's value".
    Explicit `method_args` win over the smoke ones.
    """
    values: dict[str, Any] = smoke_overrides(method) if smoke else {"method_args": {}}
    values.update({k: v for k, v in overrides.items() if v is not None})
    values["method_args"] = {**values["method_args"], **(method_args or {})}
    method_param_names(method)  # fail early on an unknown method
    return TrainConfig(method=method, **values)


def config_key(cfg: TrainConfig) -> str:
    """Short hash of everything in `cfg` that defines what is learned (see EXECUTION_FIELDS). For an image folder
    the data root is the dataset, so it counts; for CIFAR it does not (the same data may live elsewhere)."""
    d = {k: v for k, v in cfg.to_dict().items()
         if k not in EXECUTION_FIELDS or (k == "data_root" and cfg.dataset == "imagefolder")}
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:8]


def run_dir_for(cfg: TrainConfig, root: str | Path, label: str) -> Path:
    safe = "".join(c if c.isalnum() or c in "-_.=" else "_" for c in label)
    return resolve_path(root) / f"{safe}-{config_key(cfg)}"


# The ImageNet notebooks' smoke budget: a paper recipe at 64 px on a generated folder, one epoch, one linear epoch.
SMOKE_STREAMED: dict[str, Any] = dict(
    image_size=64, epochs=1, batch_size=16, proj_hidden=64, proj_out=32, warmup_epochs=0.0, linear_epochs=1,
    loader_workers=0, device="cpu", log_every=1)


def recipe_train_config(smoke: bool, recipe: str, method: str = "osessl", method_args: dict | None = None,
                        **overrides) -> TrainConfig:
    """A paper recipe (osessl_core/recipes/<recipe>.yaml), or in smoke the recipe at SMOKE_STREAMED's budget, with
    `overrides` on top (None ignored) and the smoke `method_args` where the method has those parameters."""
    from ..recipes import recipe_config
    values: dict[str, Any] = dict(SMOKE_STREAMED) if smoke else {}
    values.update({k: v for k, v in overrides.items() if v is not None})
    args = smoke_overrides(method)["method_args"] if smoke else {}
    return recipe_config(recipe, method=method, **values, method_args={**args, **(method_args or {})})
