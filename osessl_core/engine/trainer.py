"""The training loop: one run, resumable and deterministic given the seed.

The loop is here; what the run directory holds and how checkpoints are kept is run_dir.py; how the step executes
on the device (precision, compile, CUDA graphs, DDP) is execution.py; where the batches come from is batches.py.
Nothing is lost or poisoned (see README, "Reliability"): a non-finite loss rolls back to the last confirmed
checkpoint; SIGINT, SIGTERM and SIGUSR1 stop at the next step boundary with a checkpoint (a second signal stops at
once); one process at a time trains a run directory.
"""
from __future__ import annotations

import contextlib
import math
import signal
import sys
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from ..config import ConfigError, TrainConfig
from ..data import load_dataset
from ..data.order import BatchPlan, seeded_subset
from ..distributed import agree_any, all_reduce_, barrier, is_distributed, is_main_process, rank, world_size
from ..errors import NonFiniteLossError, TrainingInterrupted
from ..eval.curves import read_metrics
from ..files import atomic_write_json
from ..methods import Method, StepRandom, build_method
from ..models import ema_update_, momentum_at
from ..provenance import provenance
from .batches import batch_source, data_context, load_train_data
from .checkpoint import check_compatible, config_differences, load_checkpoint
from .execution import Execution, resolve_device, view_augmentations  # noqa: F401 (re-exported)
from .optim import build_optimizer
from .run_dir import RunDir
from .schedule import lr_at, scaled_lr


def _no_phase(name):
    return contextlib.nullcontext()


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)  # Ctrl-C, SLURM's pre-emption and requeue signals


@dataclass
class TrainResult:
    run_dir: Path
    method: Method
    step: int
    metrics: list[dict[str, Any]] = field(default_factory=list)
    eval: dict[str, Any] | None = None


class Trainer:
    """Holds the state of one run; `fit()` trains until the schedule (or max_steps) ends."""

    def __init__(self, cfg: TrainConfig, train_set=None, lock: bool = True):
        """lock=False opens the run read-only (inspection, evaluation): no lock, nothing written at start."""
        self.cfg = cfg
        self.execution = Execution.of(cfg)
        self.execution.apply_backend_flags()
        self.device = self.execution.device
        self.run_dir = Path(cfg.run_dir)
        self.files = RunDir(self.run_dir, writer=lock and is_main_process())
        self.files.claim()
        self.train_set = train_set if train_set is not None else load_train_data(cfg)
        self.plan = BatchPlan(len(self.train_set), cfg.batch_size, world_size())
        self.global_batch, self.steps_per_epoch = self.plan.global_batch, self.plan.steps_per_epoch
        self.total_steps = self.steps_per_epoch * cfg.epochs
        self.warmup_steps = round(cfg.warmup_epochs * self.steps_per_epoch)
        self.peak_lr = scaled_lr(cfg.base_lr, self.global_batch)

        torch.manual_seed(cfg.seed)  # network initialisation
        self.data = data_context(self.train_set)
        self.method = self.execution.place(build_method(cfg, self.data))
        self.model, self.loss_fn = self.execution.wrap(self.method)
        trainable = [(n, p) for n, p in self.method.named_parameters() if p.requires_grad]
        self.optimizer = build_optimizer(trainable, cfg.optimizer, self.peak_lr,
                                         cfg.sgd_momentum, cfg.weight_decay, fused=self.device.type == "cuda")
        # The same generators on every rank: each draws the global batch's randomness and uses its share.
        self.rng = StepRandom.create(cfg.seed, self.device)
        self.batch = batch_source(cfg, self.train_set, self.plan, rank(), self.device, self.method)
        self.step = 0
        self.metrics: list[dict[str, Any]] = []
        self._stop_signal: str | None = None
        self.knn_monitor = self.tensorboard = None
        if cfg.knn_monitor_every and is_main_process():
            if not hasattr(self.train_set, "images"):
                raise ConfigError("knn_monitor_every works on device-resident data; for a streamed folder evaluate "
                                  "checkpoints with `osessl eval --run-dir ...`")
            from .monitor import KnnMonitor
            self.knn_monitor = KnnMonitor(self.train_set, load_dataset(cfg.dataset, cfg.data_root, "test"),
                                          cfg.knn_monitor_train, cfg.knn_monitor_test, cfg.seed, self.device)
        self._resume_or_start()

    @property
    def checkpoint_path(self) -> Path:
        return self.files.checkpoint

    def close(self) -> None:
        """Release the run directory (the lock) and the loader; the trainer's state stays usable."""
        self.batch.close()
        self.files.release()

    # ---- start or resume ---------------------------------------------------------------------------------------
    def _resume_or_start(self) -> None:
        cfg = self.cfg
        self.files.recover()
        if cfg.resume and self.files.checkpoint.exists():
            state = load_checkpoint(self.files.checkpoint)
            saved = {**state["config"], "global_batch": state["global_batch"]}
            now = {**cfg.to_dict(), "global_batch": self.global_batch}
            check_compatible(saved, now, TrainConfig.IDENTITY + ("global_batch",), self.files.checkpoint)
            self._check_schedule_changes(saved, now, state["step"])
            try:
                self.method.load_state_dict(state["model"])
            except RuntimeError as e:
                raise RuntimeError(f"checkpoint {self.files.checkpoint} does not fit this model: {e}") from e
            self.optimizer.load_state_dict(state["optimizer"])
            self.rng.load_state_dict(state["rng"])
            self.step = state["step"]
            self.files.trim_metrics(self.step)
            return
        if self.files.writer and cfg.dataset not in ("cifar10", "cifar100"):  # defaults applied to other data
            r = self.resolved()
            print(f"{cfg.dataset}: {r['train_images']} train images at {r['image_size']}px, "
                  f"{r['num_classes']} classes; network input {r['network_input']}px"
                  + (" (zero_pad: ReSA's CIFAR 32->34 pad; --no-zero-pad turns it off)" if r["zero_pad"] else "")
                  + "; views: " + "; ".join(r["views"]), file=sys.stderr)
        self.files.start(self._config_record(), provenance(self.device), self.method.run_files(),
                         {"seed": cfg.seed, "dataset": cfg.dataset, "subset": cfg.subset})

    def _check_schedule_changes(self, saved: dict[str, Any], now: dict[str, Any], step: int) -> None:
        """Fields outside IDENTITY and EXECUTION change what is learned from here on (lr, epochs, ...): refused,
        or with allow_config_change recorded in config_changes.jsonl and config.json, so the run dir tells the
        truth."""
        fields = sorted(set(now) - set(TrainConfig.IDENTITY) - TrainConfig.EXECUTION - {"global_batch"})
        diffs = config_differences(saved, now, fields)
        if not diffs:
            return
        if not self.cfg.allow_config_change:
            raise ConfigError(f"resuming {self.run_dir} with changed training field(s): {'; '.join(diffs)}; "
                              "pass --allow-config-change to continue with the new values (recorded in the run "
                              "dir), or use another --run-dir")
        changes = {k: {"old": saved.get(k), "new": now.get(k)} for k in fields if saved.get(k) != now.get(k)}
        self.files.record_config_change(step, changes, self._config_record())

    def resolved(self) -> dict[str, Any]:
        """What the config became for this data: sizes, padding, the data path and the augmentation pipelines."""
        d, resident = self.data, hasattr(self.train_set, "images")
        stem = self.cfg.stem
        pad = self.cfg.zero_pad and (stem == "cifar" or stem == "auto" and d.image_size < 64)  # CIFAR stem only
        return {"image_size": d.image_size, "network_input": d.image_size + 2 if pad else d.image_size,
                "zero_pad": pad, "num_classes": d.num_classes, "train_images": len(self.train_set),
                "data": "device-resident" if resident else "streamed", "mean": list(d.mean), "std": list(d.std),
                "views": [repr(v) for v in view_augmentations(self.method)]}

    def _config_record(self) -> dict[str, Any]:
        return {**self.cfg.to_dict(), "resolved": self.resolved()}

    # ---- checkpoints -------------------------------------------------------------------------------------------
    def save(self) -> None:
        """Checkpoint the current step, unless parameters or buffers are non-finite (then roll back and raise)."""
        state = self.method.state_dict()
        floats = {k: v for k, v in state.items() if v.is_floating_point()}
        finite = torch.stack([torch.isfinite(v).all() for v in floats.values()])  # one host sync per checkpoint
        if not bool(finite.all()):
            bad = [k for k, ok in zip(floats, finite.tolist()) if not ok]
            raise NonFiniteLossError(f"non-finite weights at step {self.step} ({', '.join(bad[:3])}"
                                     f"{', ...' if len(bad) > 3 else ''}; run {self.run_dir}); "
                                     + self._roll_back())
        self.files.save({"step": self.step, "global_batch": self.global_batch, "world_size": world_size(),
                         "config": self.cfg.to_dict(), "model": state, "optimizer": self.optimizer.state_dict(),
                         "rng": self.rng.state_dict()}, finished=self.step >= self.total_steps)

    def _roll_back(self) -> str:
        step = self.files.roll_back()
        where = (f"the checkpoint at step {step} has finite weights" if step is not None
                 else "no checkpoint with finite weights is left, a rerun starts at step 0")
        return (f"{where}: resume with a lower learning rate (e.g. --base-lr {self.cfg.base_lr / 10:g} "
                "--allow-config-change) or check the inputs")

    # ---- training ------------------------------------------------------------------------------------------
    def train_step(self, batch, phase=None) -> dict[str, torch.Tensor]:
        """One optimisation step on this rank's Batch (already on the device). Returns detached loss terms (no
        sync).

        `phase(name)` is an optional context-manager factory wrapped around each part of the step (the benchmark
        times "augment", "forward_loss", "backward" and "optimizer" with it)."""
        phase = phase or _no_phase
        ex = self.execution
        for group in self.optimizer.param_groups:
            group["lr"] = lr_at(self.step, self.total_steps, self.warmup_steps, self.peak_lr,
                                self.cfg.final_lr_ratio)
        self.method.begin_step(self.step, self.steps_per_epoch)
        ex.step_begin()
        with phase("augment"), torch.no_grad():
            views = self.method.make_views(batch, self.rng)
            views.images = ex.to_memory_format(views.images)
        with phase("forward_loss"):
            self.momentum = self.method.momentum(momentum_at(self.step, self.total_steps, self.cfg.momentum_base))
            for online, target in self.method.momentum_pairs():  # before the forward: the previous step's weights
                ema_update_(target, online, self.momentum)
            with ex.autocast():
                terms, updates = self.loss_fn(views)
        with phase("backward"):
            self.optimizer.zero_grad(set_to_none=True)
            terms["loss"].backward()
        with phase("optimizer"):
            self.optimizer.step()
            self.method.after_step(views, updates)
        self.step += 1
        return {k: v.detach() for k, v in terms.items()}

    def fit(self) -> TrainResult:
        cfg = self.cfg
        stop = self.total_steps if cfg.max_steps is None else min(cfg.max_steps, self.total_steps)
        bar = tqdm(total=stop, initial=self.step, desc=f"{cfg.method} {cfg.dataset}", unit="step",
                   disable=not (cfg.progress and is_main_process()), dynamic_ncols=True)
        self.method.train()
        previous_handlers = self._catch_stop_signals()
        self.tensorboard = None
        if cfg.tensorboard and self.files.writer:
            from .monitor import TensorBoardLog
            self.tensorboard = TensorBoardLog(self.run_dir)
        try:
            self._loop(stop, bar)
        finally:
            bar.close()
            if self.tensorboard is not None:
                self.tensorboard.close()
            for sig, handler in previous_handlers.items():
                signal.signal(sig, handler)
        if self._stop_signal is not None:
            raise TrainingInterrupted(
                f"stopped by {self._stop_signal} at step {self.step}; checkpoint saved in {self.run_dir}: run the "
                "same command again to resume", self._stop_signal)
        return TrainResult(self.run_dir, self.method, self.step, self.metrics)

    def _catch_stop_signals(self) -> dict:
        """Stop signals set a flag read at the next step boundary; a second one stops at once (KeyboardInterrupt;
        the last checkpoint is intact). Python only delivers signals to the main thread."""
        if threading.current_thread() is not threading.main_thread():
            return {}
        previous = {}

        def handler(signum, frame):
            if self._stop_signal is not None:
                raise KeyboardInterrupt
            self._stop_signal = signal.Signals(signum).name
            if is_main_process():
                print(f"\n{self._stop_signal}: stopping after this step with a checkpoint (again to stop now)",
                      file=sys.stderr, flush=True)

        for sig in STOP_SIGNALS:
            previous[sig] = signal.signal(sig, handler)
        return previous

    def _loop(self, stop: int, bar) -> None:
        cfg = self.cfg
        sums: dict[str, torch.Tensor] = {}
        count, t0 = 0, time.perf_counter()
        t_fit = t0
        while self.step < stop:
            terms = self.train_step(self.batch(self.step))
            for k, v in terms.items():  # accumulate on the device: no host sync per step
                sums[k] = sums[k] + v if k in sums else v.clone()
            count += 1
            bar.update(1)
            end_of_epoch = self.step % self.steps_per_epoch == 0
            flush = self.step % cfg.log_every == 0 or end_of_epoch or self.step == stop
            # Checked at log points only, and agreed across ranks so that they all stop at the same step. A stop
            # signal is seen at the next step in one process; under DDP at the next log point (agreeing every
            # step would cost a collective and a host sync per step).
            out_of_time = flush and cfg.time_limit is not None and agree_any(
                time.perf_counter() - t_fit > cfg.time_limit, self.device)
            if is_distributed():
                stopping = flush and agree_any(self._stop_signal is not None, self.device)
            else:
                stopping = self._stop_signal is not None
            checkpoint = ((cfg.ckpt_every and self.step % cfg.ckpt_every == 0) or end_of_epoch
                          or self.step == stop or out_of_time or stopping)
            if flush or checkpoint:
                if count:
                    extra = {}
                    epoch = self.step // self.steps_per_epoch
                    if end_of_epoch and self.knn_monitor is not None and epoch % cfg.knn_monitor_every == 0:
                        extra["knn_monitor_top1"] = self.knn_monitor(self.method)  # between steps, rank 0
                    try:
                        row = self._log(sums, count, time.perf_counter() - t0, extra)
                    except NonFiniteLossError as e:
                        raise NonFiniteLossError(f"{e}; {self._roll_back()}") from None
                    self.files.confirm()  # these steps' losses came from the weights of the last checkpoint onwards
                    bar.set_postfix(loss=f"{row['loss']:.4f}", lr=f"{row['lr']:.3g}")
                sums, count, t0 = {}, 0, time.perf_counter()
            if checkpoint:  # only after the finiteness check in _log
                self.save()
            if out_of_time or stopping:
                if stopping and self._stop_signal is None:
                    self._stop_signal = "a peer rank's signal"
                break

    def _log(self, sums: dict[str, torch.Tensor], count: int, seconds: float,
             extra: dict[str, float] | None = None) -> dict[str, Any]:
        keys = sorted(sums)
        totals = all_reduce_(torch.stack([sums[k].double() for k in keys])) / world_size()  # mean over ranks
        values = {k: float(v) / count for k, v in zip(keys, totals.tolist())}  # the one host sync per interval
        for k, v in values.items():
            if not math.isfinite(v):
                raise NonFiniteLossError(f"loss term {k!r} became {v} in steps {self.step - count + 1}-{self.step} "
                                         f"(run {self.run_dir})")
        row = {"step": self.step, "epoch": self.step / self.steps_per_epoch,
               "lr": self.optimizer.param_groups[0]["lr"],
               "momentum": self.momentum,
               **values, "steps": count, "seconds": seconds,
               "images_per_s": count * self.global_batch / max(seconds, 1e-9), **(extra or {})}
        self.metrics.append(row)
        self.files.append_metrics(row)
        if self.tensorboard is not None:
            self.tensorboard.log(row)
        return row


def load_run(run_dir: str | Path, **overrides) -> Trainer:
    """A run directory's model and state without training: its config.json with `overrides`, resumed from its
    checkpoint (not compiled). Used to evaluate or inspect finished or partial runs."""
    run_dir = Path(run_dir)
    if not (run_dir / "checkpoint.pt").exists():
        raise FileNotFoundError(f"no checkpoint.pt in {run_dir}")
    cfg = TrainConfig.load(run_dir / "config.json")
    return Trainer(replace(cfg, **{"run_dir": str(run_dir), "resume": True, "progress": False, "compile": False,
                                   **overrides}), lock=False)


def train(cfg: TrainConfig, train_set=None) -> TrainResult:
    """Train (resuming from `cfg.run_dir` if it holds a checkpoint), then evaluate as configured."""
    evaluating = cfg.eval_knn or cfg.eval_linear
    if evaluating and cfg.eval_test_subset:  # fail now, not after the training
        from .batches import open_streamed, streams
        test = open_streamed(cfg, "val") if streams(cfg) else load_dataset(cfg.dataset, cfg.data_root, "test")
        seeded_subset(len(test), cfg.eval_test_subset, cfg.seed, "eval_test_subset")
    trainer = Trainer(cfg, train_set)
    try:
        result = trainer.fit()
        barrier()
        if evaluating and is_main_process() and trainer.step >= trainer.total_steps:
            from .evaluate import evaluate_run
            result.eval = evaluate_run(trainer.method, cfg, trainer.train_set, trainer.device)
            atomic_write_json(trainer.run_dir / "eval.json", {
                **result.eval, "step": trainer.step, "epochs": cfg.epochs,
                # across resumed processes; excludes start-up
                "train_seconds": sum(r["seconds"] for r in read_metrics(trainer.run_dir)),
                "provenance": provenance(trainer.device)})
    finally:
        trainer.close()
    return result
