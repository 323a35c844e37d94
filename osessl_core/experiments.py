"""What the notebooks share, so that each notebook stays a parameters cell, a few calls and a plot.

- budgets: `SMOKE_BUDGET` (a tiny CPU run on real CIFAR data, for CI) and the paper recipe (TrainConfig's defaults);
- `start(...)` -> `Experiment`: resolves paths from the repository root, builds configs, trains through the core's
  resumable run directories (`runs/<label>-<config hash>`), and writes result files with provenance;
- `sweep(...)`: one training per (dataset, row) for the ablation tables, with the paper's numbers beside them;
- `PAPER`: the numbers the OSESSL paper reports, per table;
- feature helpers (momentum encoder / projector layers), fine-tuning for the semi-supervised protocol,
  exemplar neighbours for Figure 4, short timing runs for Table 17;
- `make_image_folder_from_cifar(...)`: a small train/test image folder cut from the CIFAR-10 archive, to test the
  notebooks whose real data (ImageNet, fine-grained sets) is not here.

A result file holds only numbers computed by the run that wrote it; the paper's numbers appear only in columns
named `paper_*`, with `diff_*` = measured - paper.
"""
from __future__ import annotations

import contextlib
import copy
import csv
import hashlib
import io
import json
import math
import resource
import sys
import tarfile
import time
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .config import TrainConfig
from .data.exemplars import labelled_fraction
from .eval.curves import read_metrics
from .provenance import REPO_ROOT, provenance

DEFAULT_DATA_ROOT = REPO_ROOT.parent / "shared" / "data"
CIFAR_ARCHIVE_NAME = "cifar10-jpg.tar.gz"

# A run that finishes in seconds on a 2-core CPU on real CIFAR data: it shows the pipeline works, nothing more.
SMOKE_BUDGET: dict[str, Any] = dict(
    subset=256, width=8, proj_hidden=64, proj_out=32, epochs=1, batch_size=64, warmup_epochs=0.0,
    eval_test_subset=200, linear_epochs=5, device="cpu", log_every=1)
SMOKE_METHOD_ARGS: dict[str, Any] = {"memory_size": 64}  # given to every method whose parameters have the field
# Smoke sizes for the figure and analysis notebooks.
SMOKE_EMBED = dict(points=150, tsne_iter=300, umap_epochs=30)
# TrainConfig fields that change how a run executes or is evaluated, not what it learns: left out of the run
# directory's name, so that e.g. re-evaluating with a linear probe reuses the same checkpoint.
# The batch size is kept in the name (a notebook run's global batch is its batch_size).
EXECUTION_FIELDS = TrainConfig.EXECUTION - {"batch_size"}


# ============================================================================================ paths and configs

def resolve_path(path: str | Path) -> Path:
    """Relative paths are taken from the repository root (notebooks run with cwd notebooks/ or the root)."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else REPO_ROOT / p


def method_param_names(method: str) -> set[str]:
    from .methods import METHODS
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; registered: {sorted(METHODS)}")
    return {f.name for f in fields(METHODS[method].Params)}


# The figure notebooks' smoke runs (t-SNE/UMAP, k-means per method) check their pipeline on two methods; every
# registered method's training, resume and evaluation are tested by tests/test_train.py's per-method CLI test.
SMOKE_METHODS = ("resa", "osessl")


def paper_methods(table_name: str) -> list[str]:
    """The registered methods that the paper reports in `table_name`, in the paper's order."""
    from .methods import METHODS
    rows = [m for ds in PAPER[table_name].values() for m in ds]
    return [m for m in dict.fromkeys(rows) if m in METHODS]


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


def dataset_available(name: str, root: str | Path) -> tuple[bool, str]:
    """(True, source) if `name` can be loaded from `root` without a download, else (False, why)."""
    from .data import DatasetError, load_dataset
    try:
        return True, load_dataset(name, root, "test", download=False).source
    except DatasetError as e:
        return False, str(e)


def steps_per_epoch(cfg: TrainConfig) -> int:
    from .data import load_dataset
    n = cfg.subset or len(load_dataset(cfg.dataset, cfg.data_root, "train"))
    return n // cfg.batch_size


# ============================================================================================ results

def _plain(x):
    """JSON-safe copy: numpy/torch scalars become Python numbers, paths inside the repository become relative to
    it (a result file means the same on every clone); non-finite floats are an error."""
    if isinstance(x, dict):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if isinstance(x, torch.Tensor):
        x = x.tolist()
        return _plain(x)
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, Path):
        x = str(x)
    if isinstance(x, str) and x.startswith(str(REPO_ROOT) + "/"):
        return x[len(str(REPO_ROOT)) + 1:]  # paths inside the clone are stored relative to the repository
    if isinstance(x, float) and not math.isfinite(x):
        raise ValueError(f"refusing to write a non-finite number ({x}) into a result file")
    return x


def write_results(out_dir: str | Path, name: str, rows: list[dict], extra: dict | None = None, *,
                  device: str | torch.device = "cpu", config: dict | None = None, seed: int | None = None,
                  data_source: Any = None, wall_seconds: float | None = None) -> dict[str, Path]:
    """Write `name`.json (rows + extra + provenance) and `name`.csv (the rows) into out_dir; return the paths.

    Provenance: git SHA, device and versions (osessl_core.provenance), plus the config, seed, wall time and data
    source given here. Nested values in the CSV are JSON-encoded.
    """
    from .files import atomic_write_json
    out = resolve_path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    payload = _plain({
        "name": name, "rows": rows, **(extra or {}),
        "config": config, "seed": seed, "data_source": data_source, "wall_seconds": wall_seconds,
        "provenance": provenance(device)})
    paths = {"json": out / f"{name}.json", "csv": out / f"{name}.csv"}
    atomic_write_json(paths["json"], payload)
    columns: list[str] = []
    for row in payload["rows"]:
        columns += [k for k in row if k not in columns]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in payload["rows"]:
        writer.writerow({k: json.dumps(v) if isinstance(v, (dict, list)) else v for k, v in row.items()})
    paths["csv"].write_text(buf.getvalue())
    return paths


def save_figure(fig, out_dir: str | Path, stem: str, dpi: int = 150) -> list[Path]:
    out = resolve_path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{stem}.png", out / f"{stem}.pdf"]
    fig.savefig(paths[0], dpi=dpi, bbox_inches="tight")
    fig.savefig(paths[1], bbox_inches="tight")
    return paths


def table(rows: list[dict], columns: list[str] | None = None, digits: int = 2):
    """A pandas DataFrame of `rows` for display, numbers rounded (also in columns that mix numbers and text, such
    as "not implemented")."""
    import pandas as pd
    df = pd.DataFrame(rows)
    if columns is not None:
        df = df[[c for c in columns if c in df.columns]]
    return df.round(digits).map(lambda v: round(v, digits) if isinstance(v, float) else v)


# ============================================================================================ the paper's numbers

def _acc(linear, knn, prefix=""):
    return {f"{prefix}linear_top1": linear, f"{prefix}knn_top1": knn}


def _two_datasets(rows: dict[str, tuple]) -> dict:
    """{row: (c10 linear, c10 kNN, c100 linear, c100 kNN)} -> {dataset: {row: {...}}}."""
    return {"cifar10": {r: _acc(*v[:2]) for r, v in rows.items()},
            "cifar100": {r: _acc(*v[2:]) for r, v in rows.items()}}


# Keyed by registered method name (cwrgp and intl are not implemented: see not_implemented_rows).
_TABLE1 = {  # method: (CIFAR-10 linear, kNN, CIFAR-100 linear, kNN, ImageNet-100 linear, kNN); ResNet-18
    "simclr": (90.74, 85.13, 65.78, 53.19, 77.64, 65.78),
    "byol": (92.58, 87.40, 70.46, 56.46, 80.32, 68.94),
    "swav": (89.17, 84.18, 64.88, 53.32, 74.28, 63.84),
    "simsiam": (90.51, 86.82, 66.04, 55.79, 78.72, 67.92),
    "mocov3": (93.10, 89.47, 68.83, 58.23, 80.36, 72.76),
    "wmse": (91.55, 89.69, 66.10, 56.69, 76.23, 67.72),
    "dino": (89.52, 86.13, 66.76, 56.24, 74.92, 64.30),
    "barlow": (92.10, 88.09, 70.90, 59.40, 80.16, 72.14),
    "vicreg": (92.07, 87.38, 68.54, 56.32, 79.40, 71.94),
    "cwrgp": (92.03, 89.67, 67.78, 58.24, 76.96, 68.46),
    "intl": (92.60, 90.03, 70.88, 61.90, 81.68, 73.46),
    "resa": (93.53, 93.02, 72.21, 66.83, 82.24, 74.56),
    "osessl": (95.19, 94.20, 75.47, 69.89, 83.88, 80.42),
}

# The OSESSL paper's reported numbers (top-1 %, except Table 17). Keys: table -> dataset -> row -> column.
PAPER: dict[str, dict] = {
    "table1": {ds: {m: _acc(*v[2 * i:2 * i + 2]) for m, v in _TABLE1.items()}
               for i, ds in enumerate(("cifar10", "cifar100", "imagenet100"))},
    # Table 6 rows: which loss terms are on (L_proto = L_align + L_disp, L_mix = L_mix-proto + L_mix-ins).
    "table6": _two_datasets({"cluster": (93.5, 93.0, 72.2, 66.8), "cluster+proto": (94.7, 93.9, 74.3, 68.4),
                             "cluster+proto+mix": (95.2, 94.2, 75.5, 69.9)}),
    "table7": _two_datasets({"k=2": (94.3, 93.4, 74.9, 68.3), "k=4": (94.6, 93.5, 75.0, 68.8),
                             "k=8": (95.2, 94.2, 75.5, 69.9), "k=16": (94.5, 93.8, 74.6, 68.7)}),
    "table8": _two_datasets({"alpha=1": (94.8, 94.0, 75.2, 69.1), "alpha=0.75": (95.2, 94.2, 75.5, 69.9),
                             "alpha=0.5": (95.0, 94.0, 75.3, 69.3), "alpha=0.25": (94.8, 94.0, 75.0, 69.1)}),
    "table9": _two_datasets({"seed=1": (94.8, 93.8, 75.6, 68.8), "seed=2": (95.2, 94.1, 75.1, 69.0),
                             "seed=3": (95.1, 93.7, 75.9, 69.0), "seed=4": (94.9, 94.0, 74.8, 69.7),
                             "seed=5": (94.9, 94.0, 75.0, 68.8)}),
    "table14": {"cifar100": {m: {**_acc(*v[:2], prefix="fine_"), **_acc(*v[2:], prefix="coarse_")} for m, v in {
        "simclr": (65.8, 53.2, 72.5, 67.2), "swav": (64.9, 53.3, 70.0, 66.3), "mocov3": (68.8, 58.2, 76.4, 68.6),
        "dino": (66.8, 56.2, 72.9, 70.2), "vicreg": (68.5, 56.3, 74.3, 69.9), "resa": (72.2, 66.8, 79.8, 78.8),
        "osessl": (75.5, 69.4, 82.7, 82.2)}.items()}},
    # Table 15: the other coefficient stays at 1.
    "table15": _two_datasets({"lam=0.1": (94.6, 93.8, 74.9, 69.5), "lam=0.5": (94.8, 94.0, 75.3, 69.3),
                              "lam=1": (95.2, 94.2, 75.5, 69.9), "mu=0.1": (94.4, 93.7, 74.8, 68.7),
                              "mu=0.5": (94.8, 93.8, 75.2, 69.4), "mu=1": (95.2, 94.2, 75.5, 69.9)}),
    # Table 16 with the paper's own labels (this codebase reads them as swapped, see the notebook).
    "table16": _two_datasets({"tau_s=0.01": (94.9, 94.1, 75.2, 69.8), "tau_s=0.02": (94.7, 93.6, 74.8, 69.0),
                              "tau_s=0.03": (94.7, 93.8, 75.2, 69.2), "tau_s=0.04": (95.2, 94.2, 75.5, 69.9),
                              "tau_t=0.1": (95.2, 94.2, 75.5, 69.9), "tau_t=0.2": (95.0, 94.1, 75.0, 69.4),
                              "tau_t=0.3": (94.9, 94.1, 74.7, 68.9), "tau_t=0.4": (94.9, 94.2, 74.5, 68.4)}),
    # Table 17: ResNet-50, ImageNet-1K, batch 1024, 8x V100-32GB, mixed precision.
    "table17": {"imagenet1k": {"mocov3": {"memory_gb": 14.9, "hours_per_epoch": 0.39},
                               "dino": {"memory_gb": 15.0, "hours_per_epoch": 0.41},
                               "resa": {"memory_gb": 14.8, "hours_per_epoch": 0.36},
                               "osessl": {"memory_gb": 15.8, "hours_per_epoch": 0.40}}},
    # Table 4: ImageNet-1K semi-supervised fine-tuning of a ResNet-50 on 1% / 10% of the labels.
    "table4": {"imagenet1k": {"resa": {"top1_1pct": 56.4, "top1_10pct": 70.4, "top5_1pct": 81.0, "top5_10pct": 90.1},
                              "osessl": {"top1_1pct": 61.3, "top1_10pct": 72.5, "top5_1pct": 84.8,
                                         "top5_10pct": 91.0}}},
    # Table 5: weighted k-NN (k = 5, 10, 20) on frozen ResNet-50 ImageNet-1K features.
    "table5": {ds: {m: dict(zip(("knn5_top1", "knn10_top1", "knn20_top1"), v[i])) for m, v in {
        "resa": [(69.2, 69.9, 69.9), (56.5, 58.5, 59.9), (85.8, 87.2, 87.5), (58.3, 60.4, 61.3), (84.4, 83.6, 83.6)],
        "osessl": [(70.7, 71.3, 71.4), (57.0, 59.2, 60.5), (87.0, 88.3, 88.3), (60.8, 63.2, 64.2),
                   (83.9, 84.2, 84.4)]}.items()}
        for i, ds in enumerate(("imagenet1k", "cub200", "pets37", "food101", "flowers102"))},
}


def paper_row(table_name: str, dataset: str, row: str) -> dict | None:
    return PAPER.get(table_name, {}).get(dataset, {}).get(row)


def with_paper(record: dict, table_name: str, dataset: str, row: str) -> dict:
    """Add paper_<col> and diff_<col> (measured - paper) for every column the paper reports for this row."""
    ref = paper_row(table_name, dataset, row) or {}
    out = dict(record)
    for col, value in ref.items():
        out[f"paper_{col}"] = value
        if record.get(col) is not None:
            out[f"diff_{col}"] = round(record[col] - value, 4)
    return out


# ============================================================================================ the experiment

@dataclass
class Experiment:
    """One notebook's settings; every file it writes goes under `out_dir`, runs under `run_root`."""
    name: str
    smoke: bool
    out_dir: Path
    run_root: Path
    data_root: str
    device: str | None
    seed: int
    started: float = field(default_factory=time.perf_counter)
    data_sources: dict[str, str] = field(default_factory=dict)
    _evals: dict[str, tuple] = field(default_factory=dict, repr=False)

    @property
    def torch_device(self) -> torch.device:
        from .engine.trainer import resolve_device
        return resolve_device(self.device or ("cpu" if self.smoke else "auto"))

    def config(self, method: str = "osessl", method_args: dict | None = None, **overrides) -> TrainConfig:
        # A full run shows a training progress bar in the notebook (tqdm.auto: a widget); a smoke run stays quiet.
        base = dict(data_root=self.data_root, device=self.device, seed=self.seed, progress=not self.smoke)
        base.update({k: v for k, v in overrides.items() if v is not None})
        return train_config(self.smoke, method, method_args, **base)

    def note_dataset(self, name: str, root: str | None = None) -> str:
        key = f"{name}:{root or self.data_root}"
        if key not in self.data_sources:
            ok, source = dataset_available(name, root or self.data_root)
            if not ok:
                raise FileNotFoundError(source)
            self.data_sources[key] = source
        return self.data_sources[key]

    def available(self, name: str, root: str | None = None) -> bool:
        """True if the dataset is there; otherwise print why (the caller skips its rows)."""
        ok, info = dataset_available(name, root or self.data_root)
        if not ok:
            print(f"SKIPPED {name}: no data under {root or self.data_root}. {info}")
        return ok

    def run(self, cfg: TrainConfig, label: str, require_complete: bool = True):
        """Train (resuming from runs/<label>-<hash> if it has a checkpoint); return (TrainResult, eval dict).

        The eval dict is the core's evaluation (empty when eval_knn and eval_linear are off) plus wall_seconds,
        run_dir and final_loss. With require_complete, a run that stopped before its schedule (or max_steps)
        ended, e.g. at its time_limit, is an error that says to run again (it resumes). The same config asked
        for twice in one notebook (under any label) is trained and evaluated once.
        """
        from .engine import train
        key = json.dumps({**cfg.to_dict(), "run_dir": None}, sort_keys=True, default=str)
        if key in self._evals:
            return self._evals[key]
        cfg = replace(cfg, run_dir=str(run_dir_for(cfg, self.run_root, label)))
        self.note_dataset(cfg.dataset, cfg.data_root)
        t0 = time.perf_counter()
        result = train(cfg)
        target = cfg.epochs * steps_per_epoch(cfg)
        if cfg.max_steps is not None:
            target = min(target, cfg.max_steps)
        if result.step < target:
            if require_complete:
                raise RuntimeError(f"run {cfg.run_dir} stopped at step {result.step} of {target} (time_limit?); "
                                   "run the notebook again to resume it")
            return result, {"run_dir": cfg.run_dir, "step": result.step}
        ev = dict(result.eval or {})
        ev["wall_seconds"] = time.perf_counter() - t0
        ev["run_dir"] = str(cfg.run_dir)
        logged = result.metrics or read_metrics(cfg.run_dir)
        ev["final_loss"] = logged[-1]["loss"] if logged else None
        self._evals[key] = (result, ev)
        return result, ev

    def untrained(self, cfg: TrainConfig):
        """A TrainResult at step 0: the method exactly as `cfg` initialises it, trained for no step and with no
        run directory written (max_steps must be >= 1, so "train 0 steps" is this instead)."""
        from .engine import Trainer, TrainResult
        trainer = Trainer(replace(cfg, run_dir=str(self.run_root / "untrained"), resume=False), lock=False)
        return TrainResult(trainer.run_dir, trainer.method, 0)

    def write(self, rows: list[dict], config: dict | TrainConfig | None, extra: dict | None = None,
              name: str | None = None) -> dict[str, Path]:
        if isinstance(config, TrainConfig):
            config = config.to_dict()
        paths = write_results(
            self.out_dir, name or self.name, rows, {"smoke": self.smoke, **(extra or {})},
            device=self.torch_device, config=config, seed=self.seed,
            data_source={"data_root": self.data_root, **self.data_sources},
            wall_seconds=time.perf_counter() - self.started)
        print("wrote", ", ".join(_plain(str(p)) for p in paths.values()))
        return paths

    def save_figure(self, fig, stem: str) -> list[Path]:
        return save_figure(fig, self.out_dir, stem)


def start(name: str, smoke: bool, out_dir: str, data_root: str | None = None, device: str | None = None,
          seed: int = 0, run_root: str | None = None, quiet: bool = True, trains: bool = True) -> Experiment:
    """Set up a notebook: resolve its paths, silence known-noisy warnings, print the budget it runs with.
    `trains=False` (a notebook that only reads results) skips the refusal of a full budget without CUDA."""
    if quiet:
        setup_quiet()
    enable_inline_figures()
    if trains and not smoke and device is None and not torch.cuda.is_available():
        raise FullBudgetOnCPUError(
            f"{name}: SMOKE=False runs the paper's full budget (1000-epoch runs), days on this machine without "
            "CUDA. Set SMOKE = True to check the pipeline in seconds, or DEVICE = \"cpu\" (with a small EPOCHS) "
            "to run it on the CPU anyway.")
    out = resolve_path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    exp = Experiment(name=name, smoke=bool(smoke), out_dir=out,
                     run_root=resolve_path(run_root) if run_root else out / "runs",
                     data_root=str(resolve_path(data_root) if data_root else DEFAULT_DATA_ROOT),
                     device=device, seed=int(seed))
    mode = "SMOKE (tiny CPU budget: checks the pipeline, the numbers are not results)" if exp.smoke else "full"
    print(f"{name}: {mode}; device {exp.torch_device}; data {_plain(exp.data_root)}; out {_plain(str(exp.out_dir))}")
    return exp


class FullBudgetOnCPUError(RuntimeError):
    """Shown in Jupyter as its one-line message, not a traceback: it is a usage error, not a bug."""

    def _render_traceback_(self):  # IPython's hook for custom exception display
        return [f"{type(self).__name__}: {self}"]


def _figure_png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return buf.getvalue()


def enable_inline_figures() -> None:
    """Make `display(fig)` (and a figure as a cell's last value) render a PNG in Jupyter, papermill and nbconvert.

    The plot helpers build bare `matplotlib.figure.Figure`s without pyplot (no global figure list, no backend
    state), so the inline backend's formatter, which pyplot installs on import, is never registered: IPython
    would print `<Figure size ...>`. Registering the PNG formatter for Figure here is what matplotlib-inline does,
    without pyplot. Outside IPython this does nothing."""
    try:
        from IPython import get_ipython
    except ImportError:
        return
    shell = get_ipython()
    if shell is None:
        return
    from matplotlib.figure import Figure
    shell.display_formatter.formatters["image/png"].for_type(Figure, _figure_png)


def setup_quiet() -> None:
    import logging
    import warnings
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", message=".*n_jobs value.*")  # UMAP with a fixed random_state
    warnings.filterwarnings("ignore", message=".*omp_set_nested.*")
    logging.getLogger("numba").setLevel(logging.WARNING)


# ============================================================================================ sweeps

MEASURED = ("linear_top1", "knn_top1")


def sweep(exp: Experiment, rows: list[dict], datasets: Iterable[str], table_name: str,
          extra_cols: Iterable[str] = (), **common) -> tuple[list[dict], list[dict]]:
    """Train and evaluate one run per (dataset, row); return (result rows, skipped datasets).

    A row is {"label": str, "method": name (default "osessl"), "method_args": {...}, **TrainConfig overrides};
    `common` are TrainConfig overrides for every row. The label is the paper's row name, so paper_* and diff_*
    columns are added where the paper reports that row. Datasets without data are skipped with a message (and
    listed in the second return value). `extra_cols` copies those row/method parameters into the result rows.
    Each result row holds the TrainConfig it trained with ("config", its run_dir included): a notebook's
    file-level config is built without a dataset, so only the rows say which data each run used.
    """
    out, skipped = [], []
    for ds in datasets:
        ok, info = dataset_available(ds, exp.data_root)
        if not ok:
            print(f"SKIPPED {ds}: {info}")
            skipped.append({"dataset": ds, "reason": info})
            continue
        for row in rows:
            row = dict(row)
            label, method = row.pop("label"), row.pop("method", "osessl")
            cfg = exp.config(method, row.pop("method_args", None), dataset=ds, **{**common, **row})
            result, ev = exp.run(cfg, label=f"{ds}-{label}")
            rec = {"dataset": ds, "row": label, "method": method, "seed": cfg.seed,
                   **{k: ev[k] for k in MEASURED if k in ev},
                   **{c: param_value(cfg, c) for c in extra_cols},
                   "final_loss": ev["final_loss"], "steps": result.step, "epochs": cfg.epochs,
                   "train_seconds": ev["wall_seconds"], "method_args": cfg.method_args,
                   "config": {**cfg.to_dict(), "run_dir": ev["run_dir"]}}  # what this row trained: its dataset
            out.append(with_paper(rec, table_name, ds, label))
            print(f"{ds:9s} {label:22s} " + "  ".join(f"{k} {rec[k]:6.2f}" for k in MEASURED if k in rec))
    return out, skipped


NOT_IMPLEMENTED = "not implemented"


def not_implemented_rows(table_name: str, results: list[dict], columns: Iterable[str] = MEASURED) -> list[dict]:
    """Rows for the methods the paper reports in `table_name` that are not registered here (in Table 1, CW-RGP and
    INTL, whose papers this project does not have): the paper's numbers as paper_* columns and each measured column
    marked "not implemented", for every dataset that `results` (a sweep's rows) covers."""
    from .methods import METHODS
    out = []
    for ds in dict.fromkeys(r["dataset"] for r in results):
        for method, ref in PAPER[table_name].get(ds, {}).items():
            if method not in METHODS:
                out.append({"dataset": ds, "row": method, "method": method, **{c: NOT_IMPLEMENTED for c in columns},
                            **{f"paper_{c}": v for c, v in ref.items()}})
    return out


def param_value(cfg: TrainConfig, name: str):
    """The effective value of a method parameter or TrainConfig field in `cfg` (defaults filled in; None if the
    method has no such parameter)."""
    from .methods import METHODS
    if name in cfg.method_args:
        return cfg.method_args[name]
    if hasattr(cfg, name):
        return getattr(cfg, name)
    return getattr(METHODS[cfg.method].Params(**cfg.method_args), name, None)


def mean_std(rows: list[dict], columns=MEASURED) -> list[dict]:
    """Per dataset: mean and sample std (ddof=1) of each column over the rows (Table 9's seeds), with the same
    statistics of the paper's per-row numbers where the rows carry paper_* columns."""
    out = []
    for ds in dict.fromkeys(r["dataset"] for r in rows):
        sub = [r for r in rows if r["dataset"] == ds]
        rec: dict[str, Any] = {"dataset": ds, "n": len(sub)}
        for col in columns:
            for prefix in ("", "paper_"):
                vals = [r[prefix + col] for r in sub if isinstance(r.get(prefix + col), (int, float))]
                if vals:
                    rec[f"{prefix}{col}_mean"] = round(float(np.mean(vals)), 4)
                    rec[f"{prefix}{col}_std"] = round(float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0, 4)
        out.append(rec)
    return out


def sweep_configs(rows: list[dict]) -> dict[str, dict]:
    """The result file's `config`: each sweep row's own TrainConfig, keyed "<dataset>/<row>" (so CIFAR-100 rows
    say cifar100)."""
    return {f"{r['dataset']}/{r.get('row', r.get('method'))}": r["config"] for r in rows if "config" in r}


def plot_sweep(rows: list[dict], title: str, columns=MEASURED):
    """One panel per dataset, one shared y-axis: a dot per (row, column), measured filled and the paper's hollow
    beside it. Rows are categories, so no line joins them; a short or smoke run simply sits below the paper."""
    from matplotlib.figure import Figure
    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    per_panel = max((sum(r["dataset"] == ds for r in rows) for ds in datasets), default=1)
    fig = Figure(figsize=(max(4.0, 0.55 * per_panel * len(columns) + 2.5) * max(len(datasets), 1), 4.0),
                 layout="constrained")
    axes = fig.subplots(1, max(len(datasets), 1), squeeze=False, sharey=True)[0]
    width = 0.8 / max(len(columns), 1)
    for ax, ds in zip(axes, datasets):
        sub = [r for r in rows if r["dataset"] == ds]
        x = np.arange(len(sub))
        for i, col in enumerate(columns):
            off = x + (i - (len(columns) - 1) / 2) * width
            measured = [r.get(col) if isinstance(r.get(col), (int, float)) else np.nan for r in sub]
            paper = [r.get(f"paper_{col}") if isinstance(r.get(f"paper_{col}"), (int, float)) else np.nan
                     for r in sub]
            ax.plot(off - width / 5, measured, "o", color=f"C{i}", label=f"measured {col}")
            if not np.all(np.isnan(paper)):
                ax.plot(off + width / 5, paper, "D", mfc="none", color=f"C{i}", label=f"paper {col}")
        ax.set_xticks(x, [str(r.get("row", r.get("method"))) for r in sub], rotation=30, ha="right")
        ax.set_xlim(-0.6, len(sub) - 0.4)
        ax.grid(axis="y", alpha=0.3)
        ax.set_title(ds)
    axes[0].set_ylabel("top-1 (%)")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=max(len(labels), 1), fontsize=8, frameon=False)
    fig.suptitle(title)
    return fig


def plot_bars(rows: list[dict], label: str | tuple[str, ...], panels: dict[str, list[str]], title: str):
    """Grouped bars: one panel per {panel title: [columns]}, one group per row (labelled by `label` key(s)).
    Non-numeric values (e.g. "n/a") are left out."""
    from matplotlib.figure import Figure
    keys = (label,) if isinstance(label, str) else tuple(label)
    names = [" / ".join(str(r.get(k)) for k in keys) for r in rows]
    fig = Figure(figsize=(max(3.5, 0.5 * len(rows) * max(map(len, panels.values())) + 2) * len(panels), 3.6),
                 layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    x = np.arange(len(rows))
    for ax, (panel, columns) in zip(axes, panels.items()):
        width = 0.8 / len(columns)
        for i, col in enumerate(columns):
            values = [r[col] if isinstance(r.get(col), (int, float)) else np.nan for r in rows]
            ax.bar(x + (i - (len(columns) - 1) / 2) * width, values, width, label=col)
        ax.set_xticks(x, names, rotation=20, ha="right")
        ax.set_title(panel)
        if len(columns) > 1:
            ax.legend(fontsize=7)
    fig.suptitle(title)
    return fig


# ============================================================================================ features

def momentum_network(method, projector_layers: int = 0) -> nn.Module:
    """The evaluated encoder (the momentum encoder for ReSA/OSESSL) followed by the first `projector_layers` modules
    of its projection head."""
    enc = method.eval_encoder()
    if projector_layers == 0:
        return enc
    return nn.Sequential(enc, method.eval_projector()[:projector_layers])


def representations(method, images: torch.Tensor, mean, std, device, hidden_layers: int = 3) -> dict[str, torch.Tensor]:
    """Eval-mode features of `images` at three depths (ReSA's clustering analysis):
    encoder output ("encoding"), the projector's hidden layer after `hidden_layers` modules (default: first
    Linear-BN-ReLU), and the projector output ("embedding", before L2 normalisation)."""
    from .eval import extract_features
    n_proj = len(method.eval_projector())
    return {name: extract_features(momentum_network(method, layers), images, mean, std, device=device)
            for name, layers in (("encoder", 0), ("projector_hidden", hidden_layers), ("projector", n_proj))}


def momentum_embeddings(method, images: torch.Tensor, mean, std, device) -> torch.Tensor:
    """L2-normalised momentum embeddings z' = normalize(g'(e'(x))), eval-mode BN, unaugmented images."""
    from .eval import extract_features
    net = momentum_network(method, len(method.eval_projector()))
    return F.normalize(extract_features(net, images, mean, std, device=device), dim=1)


def relabel(ds, labels: torch.Tensor, classes: list[str]):
    """The same images under another labelling (e.g. CIFAR-100's 20 coarse classes)."""
    return replace(ds, labels=torch.as_tensor(labels).long(), classes=list(classes))


# Table 14 stand-in for smoke runs without CIFAR-100: CIFAR-10's 10 classes vs two coarse groups.
CIFAR10_STAND_IN_GROUPS = {"vehicle": ["airplane", "automobile", "ship", "truck"],
                           "animal": ["bird", "cat", "deer", "dog", "frog", "horse"]}


def coarse_view(ds, groups: dict[str, list[str]] | None = None):
    """`ds` relabelled with its coarse classes: CIFAR-100's own 20 superclasses, or `groups` of class names."""
    if groups is None:
        if ds.coarse_labels is None:
            raise ValueError(f"{ds.name} has no coarse labels; pass groups={{coarse: [fine class, ...]}}")
        return relabel(ds, ds.coarse_labels, ds.coarse_classes)
    names = sorted(groups)
    of_class = {c: names.index(g) for g, members in groups.items() for c in members}
    missing = sorted(set(ds.classes) - set(of_class))
    if missing:
        raise ValueError(f"classes {missing} are in no group")
    lookup = torch.tensor([of_class[c] for c in ds.classes])
    return relabel(ds, lookup[ds.labels], names)


def evaluate_views(method, cfg: TrainConfig, views: dict[str, tuple], device) -> dict[str, Any]:
    """The core's evaluation (k-NN and/or linear probe on momentum-encoder features) of the same trained model
    under several labellings: views = {prefix: (train_set, test_set)}. Returns {prefix_knn_top1: ..., ...}."""
    from .engine.evaluate import evaluate_run
    out = {}
    for prefix, (train_set, test_set) in views.items():
        ev = evaluate_run(method, cfg, train_set, device, test_set)
        out.update({f"{prefix}_{k}": ev[k] for k in ("knn_top1", "linear_top1", "linear_top5") if k in ev})
        out[f"{prefix}_classes"] = train_set.num_classes
    return out


def load_run(run_dir: str | Path, **overrides):
    """Load a finished (or partial) run directory's model without training: returns the core's Trainer."""
    from .engine import load_run as load
    return load(resolve_path(run_dir), **overrides)


# ============================================================================================ Figure 4

def random_pool(n_total: int, size: int, exclude=(), seed: int = 0) -> torch.Tensor:
    """`size` seeded random indices of range(n_total), none of them in `exclude` (e.g. the exemplars)."""
    keep = torch.ones(n_total, dtype=torch.bool)
    keep[torch.as_tensor(list(exclude), dtype=torch.long)] = False
    candidates = keep.nonzero().flatten()
    perm = torch.randperm(len(candidates), generator=torch.Generator().manual_seed(seed))
    return candidates[perm[:size]].sort().values


@torch.no_grad()
def exemplar_neighbours(method, pool_images: torch.Tensor, mean, std, device, k: int | None = None,
                        alpha: float | None = None) -> dict[str, Any]:
    """Eq. 2 neighbours of each exemplar among a pool of images, all embedded by the momentum network.

    The memory bank only stores embeddings, not which image each came from, so to show neighbour images the
    pool is embedded here (eval mode, unaugmented) and ranked with the same discriminative score and the same
    eq. 4 weights as in training. Also returns the prototypes' neighbours in the trained memory bank itself.
    """
    from .losses import exemplar_prototypes
    p = method.params
    k, alpha = k or p.k, p.alpha if alpha is None else alpha
    z_l = momentum_embeddings(method, method.exemplar_images.cpu(), mean, std, device)
    z_pool = momentum_embeddings(method, pool_images, mean, std, device)
    _, weights, neighbours = exemplar_prototypes(z_l, z_pool, k=k, alpha=alpha)
    bank = method.memory
    _, bank_weights, bank_neighbours = exemplar_prototypes(z_l, bank.bank.cpu(), k=k, alpha=alpha,
                                                           valid=bank.valid_mask().cpu())
    return {"pool_neighbours": neighbours, "pool_weights": weights, "bank_neighbours": bank_neighbours,
            "bank_weights": bank_weights, "bank_filled": int(bank.filled), "k": k, "alpha": alpha}


def plot_exemplar_grid(exemplars: torch.Tensor, neighbours: torch.Tensor, class_names: list[str],
                       neighbour_labels: torch.Tensor | None = None, title: str | None = None):
    """Rows = classes: the exemplar (red border) then its neighbours (green border; a neighbour whose true
    class differs gets its class name in red underneath). Images are uint8 [C,3,H,W] and [C,k,3,H,W]."""
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle
    n_cls, k = neighbours.shape[:2]
    fig = Figure(figsize=(1.1 * (k + 1) + 1.5, 1.25 * n_cls), layout="constrained")
    axes = fig.subplots(n_cls, k + 1, squeeze=False)
    for c in range(n_cls):
        for j in range(k + 1):
            ax = axes[c, j]
            img = exemplars[c] if j == 0 else neighbours[c, j - 1]
            ax.imshow(img.permute(1, 2, 0).numpy(), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            h, w = img.shape[-2:]
            color = "red" if j == 0 else "green"
            ax.add_patch(Rectangle((-0.5, -0.5), w, h, fill=False, edgecolor=color, linewidth=4))
            for s in ax.spines.values():
                s.set_visible(False)
            if j == 0:
                ax.set_ylabel(class_names[c], rotation=0, ha="right", va="center", fontsize=8)
            elif neighbour_labels is not None and int(neighbour_labels[c, j - 1]) != c:
                ax.set_xlabel(class_names[int(neighbour_labels[c, j - 1])], color="red", fontsize=6)
    if title:
        fig.suptitle(title)
    return fig


# ============================================================================================ Table 17

def peak_memory(device: torch.device) -> dict[str, Any]:
    """GPU peak allocated memory (GB) on CUDA, "n/a" on CPU; plus the process' lifetime max RSS (GB)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    rss_gb = rss / 2**30 if sys.platform == "darwin" else rss / 2**20
    gpu = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else "n/a"
    return {"gpu_peak_memory_gb": gpu, "process_max_rss_gb": rss_gb}


def time_training(exp: Experiment, cfg: TrainConfig, label: str, warmup_steps: int, measure_steps: int) -> dict:
    """A fresh short run: `warmup_steps` (compilation, cudnn autotuning) then `measure_steps` timed steps.

    Returns images/s and seconds per epoch over the measured steps (from the trainer's metrics rows, which
    include the per-epoch checkpoint writes that fall inside them) and peak memory.
    """
    from .engine import Trainer
    # Log (and so time) in intervals that end exactly where the warm-up ends.
    cfg = replace(cfg, run_dir=str(run_dir_for(cfg, exp.run_root, f"bench-{label}")), resume=False,
                  max_steps=warmup_steps + measure_steps, log_every=math.gcd(warmup_steps, measure_steps),
                  ckpt_every=10**9, eval_knn=False, eval_linear=False)
    exp.note_dataset(cfg.dataset, cfg.data_root)
    trainer = Trainer(cfg)
    if trainer.device.type == "cuda":
        torch.cuda.synchronize(trainer.device)
        torch.cuda.reset_peak_memory_stats(trainer.device)
    result = trainer.fit()
    rows = [r for r in result.metrics if r["step"] > warmup_steps]
    seconds = sum(r["seconds"] for r in rows)
    images = sum(r["steps"] for r in rows) * cfg.batch_size
    ips = images / seconds if seconds > 0 else None
    return {"method": cfg.method, "measured_steps": sum(r["steps"] for r in rows), "batch_size": cfg.batch_size,
            "images_per_s": ips, "seconds_per_epoch": trainer.steps_per_epoch * cfg.batch_size / ips if ips else None,
            "steps_per_epoch": trainer.steps_per_epoch, **peak_memory(trainer.device)}


def load_bench(bench_dir: str | Path) -> list[dict]:
    """Rows from a benchmark command's results/bench/*.json, if any: a file holding {"rows": [...]} contributes
    its rows, any other JSON object is one row. Unreadable files are reported and skipped."""
    rows = []
    for path in sorted(resolve_path(bench_dir).glob("*.json")):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            print(f"skipping {path}: {e}")
            continue
        items = data.get("rows", [data]) if isinstance(data, dict) else data if isinstance(data, list) else []
        rows += [{"file": path.name, **r} for r in items if isinstance(r, dict)]
    return rows


# ============================================================================================ semi-supervised


def finetune(method, train_set, test_set, fraction: float, epochs: int = 30, lr: float = 0.01,
             batch_size: int = 256, momentum: float = 0.9, weight_decay: float = 0.0, seed: int = 0,
             device="cpu", projector_layers: int = 3) -> dict[str, Any]:
    """The OSESSL/SimCLRv2 semi-supervised protocol: fine-tune a copy of the momentum encoder (plus the first
    `projector_layers` modules of the momentum projector, i.e. Linear-BN-ReLU, the "first layer of the
    projection head") and a new linear classifier on `fraction` of the training labels; SGD with a cosine
    schedule over all steps, weak augmentation (random resized crop + flip). Returns test top-1/top-5 (%)."""
    from .data.augment import normalize, weak_view
    from .engine.evaluate import eval_normalization
    device = torch.device(device)
    idx = labelled_fraction(train_set.labels, fraction, seed)
    images, labels = train_set.images[idx].to(device), train_set.labels[idx].to(device)
    body = copy.deepcopy(momentum_network(method, projector_layers)).float().to(device).eval()
    with torch.no_grad():  # eval mode: probing the output width must not touch the BN statistics
        out_dim = body(torch.zeros(2, *images.shape[1:], device=device)).shape[1]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        head = nn.Linear(out_dim, train_set.num_classes)
    model = nn.Sequential(body, head).to(device)
    for p in model.parameters():
        p.requires_grad_(True)
    mean, std = eval_normalization(train_set)
    augment = weak_view(images.shape[-1], mean, std)
    bs = min(batch_size, len(idx))
    steps_per_epoch = max(1, len(idx) // bs)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * steps_per_epoch)
    gen = torch.Generator(device=device).manual_seed(seed)
    order_gen = torch.Generator().manual_seed(seed)
    model.train()
    loss = torch.zeros(())
    for _ in range(epochs):
        perm = torch.randperm(len(idx), generator=order_gen).to(device)
        for s in range(steps_per_epoch):
            b = perm[s * bs:(s + 1) * bs]
            loss = F.cross_entropy(model(augment(images[b], gen)), labels[b])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    model.eval()
    correct1 = correct5 = 0
    with torch.no_grad():
        for start in range(0, len(test_set), 1000):
            x = normalize(test_set.images[start:start + 1000].to(device), mean, std)
            y = test_set.labels[start:start + 1000].to(device)
            top = model(x).topk(min(5, train_set.num_classes), dim=1).indices
            correct1 += (top[:, 0] == y).sum().item()
            correct5 += (top == y[:, None]).any(1).sum().item()
    n = len(test_set)
    return {"fraction": fraction, "n_labelled": len(idx), "epochs": epochs, "lr": lr, "batch_size": bs,
            "top1": 100.0 * correct1 / n, "top5": 100.0 * correct5 / n, "final_train_loss": float(loss.detach())}


# ============================================================================================ image folders

def make_image_folder_from_cifar(dest: str | Path, archive: str | Path | None = None, per_class_train: int = 20,
                                 per_class_test: int = 20, classes: Iterable[str] | None = None) -> Path:
    """Copy the first `per_class_*` JPEGs of each class (archive order) of the CIFAR-10 archive into
    dest/{train,test}/<class>/, for testing the image-folder notebooks. Reuses dest if already complete."""
    from .data.datasets import CIFAR10_CLASSES
    archive = Path(archive) if archive else DEFAULT_DATA_ROOT / CIFAR_ARCHIVE_NAME
    dest = resolve_path(dest)
    wanted = list(classes) if classes is not None else list(CIFAR10_CLASSES)
    unknown = sorted(set(wanted) - set(CIFAR10_CLASSES))
    if unknown:
        raise ValueError(f"unknown CIFAR-10 classes {unknown}; valid: {CIFAR10_CLASSES}")
    quota = {"train": per_class_train, "test": per_class_test}
    marker = dest / ".complete.json"
    spec = {"archive": str(archive), "quota": quota, "classes": wanted}
    if marker.exists() and json.loads(marker.read_text()) == spec:
        return dest
    if not archive.is_file():
        raise FileNotFoundError(f"CIFAR-10 archive not found at {archive}")
    counts = {(s, c): 0 for s in quota for c in wanted}
    remaining = sum(quota[s] for s, _ in counts)
    with tarfile.open(archive, "r|*") as tf:
        for member in tf:
            if remaining == 0:
                break
            parts = [p for p in member.name.split("/") if p not in ("", ".")]
            if not member.isfile() or len(parts) < 3 or parts[-3] not in quota or parts[-1].startswith("."):
                continue
            split, cls, fname = parts[-3:]
            if (split, cls) not in counts or counts[split, cls] >= quota[split]:
                continue
            target = dest / split / cls / fname
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(tf.extractfile(member).read())
            counts[split, cls] += 1
            remaining -= 1
    short = {f"{s}/{c}": n for (s, c), n in counts.items() if n < quota[s]}
    if short:
        raise ValueError(f"{archive} has too few images for {short}")
    marker.write_text(json.dumps(spec))
    return dest


@contextlib.contextmanager
def quickstart_budget(budget: dict | None):
    """Temporarily replace the quickstart's CPU budget (used by the quickstart notebook's smoke mode)."""
    from . import quickstart
    if budget is None:
        yield
        return
    saved = quickstart.CPU_BUDGET
    quickstart.CPU_BUDGET = dict(budget)
    try:
        yield
    finally:
        quickstart.CPU_BUDGET = saved


SMOKE_QUICKSTART = dict(epochs=1, batch_size=64, width=8, subset=256, eval_test_subset=200,
                        embed_points=SMOKE_EMBED["points"], proj_hidden=64, proj_out=32, warmup_epochs=0.0)
