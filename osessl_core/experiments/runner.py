"""A notebook's experiment: `start(...)` resolves its paths and budget, and the `Experiment` it returns trains
through the core's resumable run directories (`runs/<label>-<config hash>`) and writes its result files."""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from ..config import TrainConfig
from ..paths import default_data_root
from . import datasets as data  # looked up at call time: one place to stub it in tests
from .configs import recipe_train_config, run_dir_for, train_config
from .display import enable_inline_figures, setup_quiet
from .paths import resolve_path
from .results import plain, save_figure, write_results


class FullBudgetOnCPUError(RuntimeError):
    """Shown in Jupyter as its one-line message, not a traceback: it is a usage error, not a bug."""

    def _render_traceback_(self):  # IPython's hook for custom exception display
        return [f"{type(self).__name__}: {self}"]


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
        from ..engine.trainer import resolve_device
        return resolve_device(self.device or ("cpu" if self.smoke else "auto"))

    def config(self, method: str = "osessl", method_args: dict | None = None, **overrides) -> TrainConfig:
        # A full run shows a training progress bar in the notebook (tqdm.auto: a widget); a smoke run stays quiet.
        base = dict(data_root=self.data_root, device=self.device, seed=self.seed, progress=not self.smoke)
        base.update({k: v for k, v in overrides.items() if v is not None})
        return train_config(self.smoke, method, method_args, **base)

    def recipe(self, recipe: str, method: str = "osessl", method_args: dict | None = None, **overrides) -> TrainConfig:
        """A paper recipe (e.g. "imagenet1k"), at the smoke budget in a smoke run; overrides that are None keep the
        recipe's value."""
        base = dict(data_root=self.data_root, device=self.device, seed=self.seed, progress=not self.smoke)
        base.update({k: v for k, v in overrides.items() if v is not None})
        return recipe_train_config(self.smoke, recipe, method, method_args, **base)

    def note_dataset(self, name: str, root: str | None = None) -> str:
        key = f"{name}:{root or self.data_root}"
        if key not in self.data_sources:
            ok, source = data.dataset_available(name, root or self.data_root)
            if not ok:
                raise FileNotFoundError(source)
            self.data_sources[key] = source
        return self.data_sources[key]

    def available(self, name: str, root: str | None = None) -> bool:
        """True if the dataset is there; otherwise print why (the caller skips its rows)."""
        ok, info = data.dataset_available(name, root or self.data_root)
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
        from ..engine import train
        from ..eval.curves import read_metrics
        key = json.dumps({**cfg.to_dict(), "run_dir": None}, sort_keys=True, default=str)
        if key in self._evals:
            return self._evals[key]
        cfg = replace(cfg, run_dir=str(run_dir_for(cfg, self.run_root, label)))
        self.note_dataset(cfg.dataset, cfg.data_root)
        t0 = time.perf_counter()
        result = train(cfg)
        target = cfg.epochs * data.steps_per_epoch(cfg)
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
        from ..engine import Trainer, TrainResult
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
        print("wrote", ", ".join(plain(str(p)) for p in paths.values()))
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
                     data_root=str(resolve_path(data_root) if data_root else default_data_root()),
                     device=device, seed=int(seed))
    mode = "SMOKE (tiny CPU budget: checks the pipeline, the numbers are not results)" if exp.smoke else "full"
    print(f"{name}: {mode}; device {exp.torch_device}; data {plain(exp.data_root)}; out {plain(str(exp.out_dir))}")
    return exp


def load_run(run_dir: str | Path, **overrides):
    """Load a finished (or partial) run directory's model without training: returns the core's Trainer (its
    `cfg`, `method` and `train_set`)."""
    from ..engine import load_run as load
    return load(resolve_path(run_dir), **overrides)
