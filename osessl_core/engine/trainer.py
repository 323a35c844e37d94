"""The training loop: one run directory, resumable, deterministic given the seed.

Run directory layout: config.json (resolved), provenance.json, method_state.json (the method's extra_state, if
any), exemplars.json (if the method uses exemplars),
metrics.jsonl (one line per log interval), checkpoint.pt (atomic, latest), eval.json (after training),
config_changes.jsonl (fields changed on a resume with allow_config_change), .lock (held while a process writes).

Nothing is lost or poisoned (see README, "Reliability"):
- a checkpoint becomes "confirmed" once the loss of the step after it is finite; until then the previous,
  confirmed one is kept as checkpoint.prev.pt. A non-finite loss rolls checkpoint.pt back to the confirmed one, so
  the advice "resume with a lower learning rate" works; parameters and buffers are checked finite before a write;
- SIGINT, SIGTERM and SIGUSR1 stop at the next step boundary with a checkpoint (a second signal stops at once);
- one process at a time trains a run directory (run_lock.py); stale temp files are removed at start.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import sys
import threading
import time
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from ..config import ConfigError, TrainConfig
from ..data import load_dataset
from ..data.augment import ViewAugment
from ..data.order import BatchPlan, epoch_order, seeded_subset
from ..distributed import agree_any, all_reduce_, barrier, is_distributed, is_main_process, rank, world_size
from ..eval.curves import read_metrics
from ..errors import NonFiniteLossError, RunDirError, TrainingInterrupted
from ..files import atomic_write_json, atomic_write_json_lines, remove_stale_temp_files
from ..methods import DataContext, Method, StepRandom, build_method
from ..models import momentum_at
from ..models.sync_bn import convert_sync_batchnorm
from ..provenance import provenance
from . import run_lock
from .checkpoint import check_compatible, config_differences, load_checkpoint, save_checkpoint
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


def view_augmentations(method: torch.nn.Module) -> list[ViewAugment]:
    """Every augmentation pipeline held by the method or its submodules."""
    return [v for m in method.modules() for v in vars(m).values() if isinstance(v, ViewAugment)]


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} requested but CUDA is not available; use --device cpu")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())  # torchrun: set to LOCAL_RANK by init_from_env
    return device


def load_train_data(cfg: TrainConfig):
    if not is_main_process():
        barrier()  # let rank 0 decode and cache first, then read its cache
    train = load_dataset(cfg.dataset, cfg.data_root, "train")
    if is_main_process():
        barrier()
    if cfg.subset:
        train = train.subset(seeded_subset(len(train), cfg.subset, cfg.seed))
    return train


class Trainer:
    """Holds the state of one run; `fit()` trains until the schedule (or max_steps) ends."""

    def __init__(self, cfg: TrainConfig, train_set=None, lock: bool = True):
        """lock=False opens the run read-only (inspection, evaluation): no lock, nothing written at start."""
        self.cfg = cfg
        self.lock = lock
        self.device = resolve_device(cfg.device)
        cuda = self.device.type == "cuda"
        self.amp = cuda if cfg.amp is None else cfg.amp
        self.compile = cuda if cfg.compile is None else cfg.compile
        self.channels_last = cuda if cfg.channels_last is None else cfg.channels_last
        self.tf32 = cuda and cfg.tf32 is not False
        # CUDA graphs need static addresses; DDP's bucketed all-reduce in backward is kept out of them.
        default_graphs = cuda and self.compile and not is_distributed()
        self.cuda_graphs = default_graphs if cfg.cuda_graphs is None else cfg.cuda_graphs
        if self.cuda_graphs and not (cuda and self.compile):
            raise ValueError("cuda_graphs needs compile on a CUDA device")
        if cuda:
            torch.backends.cudnn.benchmark = True
            torch.backends.cuda.matmul.allow_tf32 = self.tf32
            torch.backends.cudnn.allow_tf32 = self.tf32
        self.run_dir = Path(cfg.run_dir)
        if lock and is_main_process():
            self._claim_run_dir()
        self.train_set = train_set if train_set is not None else load_train_data(cfg)
        self.plan = BatchPlan(len(self.train_set), cfg.batch_size, world_size())
        self.global_batch, self.steps_per_epoch = self.plan.global_batch, self.plan.steps_per_epoch
        self.total_steps = self.steps_per_epoch * cfg.epochs
        self.warmup_steps = round(cfg.warmup_epochs * self.steps_per_epoch)
        self.peak_lr = scaled_lr(cfg.base_lr, self.global_batch)

        torch.manual_seed(cfg.seed)  # network initialisation
        ts = self.train_set
        data = DataContext(num_classes=ts.num_classes, image_size=ts.images.shape[-1], mean=ts.mean, std=ts.std,
                           train_images=ts.images, train_labels=ts.labels, classes=ts.classes)
        self.method = convert_sync_batchnorm(build_method(cfg, data), self.device).to(self.device)
        if self.channels_last:
            self.method.to(memory_format=torch.channels_last)
        self.model = self.method
        if is_distributed():
            # Buffers are not broadcast: BN statistics are synchronised and the bank is filled from all ranks,
            # so they are identical everywhere already.
            with warnings.catch_warnings():  # broadcast_buffers=False is still the way to skip the buffer sync
                warnings.simplefilter("ignore", FutureWarning)
                self.model = torch.nn.parallel.DistributedDataParallel(
                    self.method, device_ids=[self.device.index] if cuda else None, broadcast_buffers=False)
        params = [p for p in self.method.parameters() if p.requires_grad]
        # Weight decay on every parameter, BN and biases included (ReSA).
        self.optimizer = torch.optim.SGD(params, lr=self.peak_lr, momentum=cfg.sgd_momentum,
                                         weight_decay=cfg.weight_decay, **({"fused": True} if cuda else {}))
        # The same generators on every rank: each draws the global batch's randomness and uses its share.
        self.rng = StepRandom.create(cfg.seed, self.device)
        self.images = self.train_set.images.to(self.device)  # resident uint8; augmented on the device
        self.step = 0
        self.loss_fn = self.model
        if self.compile:
            # The loss (forward, and backward through AOTAutograd) as one graph, replayed as CUDA graphs on one GPU;
            # each augmentation pipeline as another (its random draw stays eager: see data/augment.py).
            self.loss_fn = torch.compile(self.model, mode="reduce-overhead" if self.cuda_graphs else None)
            for aug in view_augmentations(self.method):
                aug.compile()
        self.metrics: list[dict[str, Any]] = []
        self._stop_signal: str | None = None
        self.knn_monitor = self.tensorboard = None
        if cfg.knn_monitor_every and is_main_process():
            from .monitor import KnnMonitor
            self.knn_monitor = KnnMonitor(self.train_set, load_dataset(cfg.dataset, cfg.data_root, "test"),
                                          cfg.knn_monitor_train, cfg.knn_monitor_test, cfg.seed, self.device)
        self._resume_or_start()

    # ---- run directory -------------------------------------------------------------------------------------
    @property
    def checkpoint_path(self) -> Path:
        return self.run_dir / "checkpoint.pt"

    @property
    def previous_checkpoint_path(self) -> Path:
        """The last confirmed checkpoint, kept while checkpoint.pt is not yet confirmed."""
        return self.run_dir / "checkpoint.prev.pt"

    def _claim_run_dir(self) -> None:
        """Create the run dir, take its lock, and clear temp files a killed writer left (safe under the lock)."""
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            run_lock.acquire(self.run_dir)
            probe = self.run_dir / ".write-test"
            probe.touch()
            probe.unlink()
        except OSError as e:
            raise RunDirError(f"cannot use run dir {self.run_dir}: {e.strerror or e}") from None
        remove_stale_temp_files(self.run_dir)

    def close(self) -> None:
        """Release the run directory (the lock); the trainer's state stays usable."""
        if self.lock:
            run_lock.release(self.run_dir)

    def _resume_or_start(self) -> None:
        cfg = self.cfg
        ckpt, prev = self.checkpoint_path, self.previous_checkpoint_path
        if self.lock and is_main_process() and not ckpt.exists() and prev.exists():
            os.replace(prev, ckpt)  # killed between the two renames of a save: the kept one is the latest
        self._confirmed = not prev.exists()
        if cfg.resume and ckpt.exists():
            state = load_checkpoint(ckpt)
            saved = {**state["config"], "global_batch": state["global_batch"]}
            now = {**cfg.to_dict(), "global_batch": self.global_batch}
            check_compatible(saved, now, TrainConfig.IDENTITY + ("global_batch",), ckpt)
            self._check_schedule_changes(saved, now, state["step"])
            try:
                self.method.load_state_dict(state["model"])
            except RuntimeError as e:
                raise RuntimeError(f"checkpoint {self.checkpoint_path} does not fit this model: {e}") from e
            self.optimizer.load_state_dict(state["optimizer"])
            self.rng.load_state_dict(state["rng"])
            self.step = state["step"]
            self._trim_metrics(self.step)
            return
        if is_main_process() and self.lock:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self._write_config()
            if cfg.dataset not in ("cifar10", "cifar100"):  # CIFAR defaults applied to other data: say so once
                r = self.resolved()
                print(f"{cfg.dataset}: {r['train_images']} train images at {r['image_size']}px, "
                      f"{r['num_classes']} classes; network input {r['network_input']}px"
                      + (" (zero_pad: ReSA's CIFAR 32->34 pad; --no-zero-pad turns it off)" if cfg.zero_pad else "")
                      + "; views: " + "; ".join(r["views"]), file=sys.stderr)
            atomic_write_json(self.run_dir / "provenance.json", provenance(self.device))
            extra = self.method.extra_state()
            if extra:  # e.g. a semi-supervised method's labelled indices
                atomic_write_json(self.run_dir / "method_state.json", extra)
            if "exemplar_indices" in extra:
                labels = self.train_set.labels[extra["exemplar_indices"]].tolist()
                atomic_write_json(self.run_dir / "exemplars.json", {
                    **extra, "labels": labels, "classes": [self.train_set.classes[i] for i in labels],
                    "seed": cfg.seed, "dataset": cfg.dataset, "subset": cfg.subset})
            (self.run_dir / "metrics.jsonl").unlink(missing_ok=True)

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
        if self.lock and is_main_process():
            with open(self.run_dir / "config_changes.jsonl", "a") as f:
                f.write(json.dumps({"step": step, "time": time.strftime("%Y-%m-%d %H:%M:%S"),
                                    "changes": {k: {"old": saved.get(k), "new": now.get(k)} for k in fields
                                                if saved.get(k) != now.get(k)}}) + "\n")
            self._write_config()

    def resolved(self) -> dict[str, Any]:
        """What the config became for this data: sizes, padding and the augmentation pipelines."""
        ts = self.train_set
        size = int(ts.images.shape[-1])
        return {"image_size": size, "network_input": size + 2 if self.cfg.zero_pad else size,
                "zero_pad": self.cfg.zero_pad, "num_classes": ts.num_classes, "train_images": len(ts),
                "mean": list(ts.mean), "std": list(ts.std), "views": [repr(v) for v in view_augmentations(self.method)]}

    def _write_config(self) -> None:
        atomic_write_json(self.run_dir / "config.json", {**self.cfg.to_dict(), "resolved": self.resolved()})

    def _trim_metrics(self, step: int) -> None:
        """Drop metric lines logged after the checkpoint we resume from (they will be logged again), and a
        partial last line left by a crash in the middle of a write."""
        path = self.run_dir / "metrics.jsonl"
        if path.exists() and is_main_process() and self.lock:
            atomic_write_json_lines(path, [r for r in read_metrics(self.run_dir) if r["step"] <= step])

    def save(self) -> None:
        """Checkpoint the current step, unless parameters or buffers are non-finite (then roll back and raise).

        A confirmed checkpoint.pt is kept as checkpoint.prev.pt until the new one is confirmed (see confirm)."""
        state = self.method.state_dict()
        floats = {k: v for k, v in state.items() if v.is_floating_point()}
        finite = torch.stack([torch.isfinite(v).all() for v in floats.values()])  # one host sync per checkpoint
        if not bool(finite.all()):
            bad = [k for k, ok in zip(floats, finite.tolist()) if not ok]
            raise NonFiniteLossError(f"non-finite weights at step {self.step} ({', '.join(bad[:3])}"
                                     f"{', ...' if len(bad) > 3 else ''}; run {self.run_dir}); "
                                     + self._roll_back())
        if is_main_process():
            keep = self.previous_checkpoint_path if self._confirmed else None
            save_checkpoint(self.checkpoint_path, {
                "step": self.step, "global_batch": self.global_batch, "world_size": world_size(),
                "config": self.cfg.to_dict(), "model": state,
                "optimizer": self.optimizer.state_dict(), "rng": self.rng.state_dict()}, keep_previous=keep)
        self._confirmed = False
        if self.step >= self.total_steps:  # finished: no later step to confirm it, and nothing to resume
            self.confirm()

    def confirm(self) -> None:
        """The loss of a step after checkpoint.pt was finite: it is good; the kept previous one can go."""
        if not self._confirmed and is_main_process():
            self.previous_checkpoint_path.unlink(missing_ok=True)
        self._confirmed = True

    def _roll_back(self) -> str:
        """Discard an unconfirmed checkpoint.pt (its weights led to the non-finite values); say what is left."""
        if self._confirmed or not is_main_process():
            step = load_checkpoint(self.checkpoint_path)["step"] if self.checkpoint_path.exists() else None
        elif self.previous_checkpoint_path.exists():
            os.replace(self.previous_checkpoint_path, self.checkpoint_path)
            step = load_checkpoint(self.checkpoint_path)["step"]
        else:
            self.checkpoint_path.unlink(missing_ok=True)
            step = None
        self._confirmed = True
        where = (f"the checkpoint at step {step} has finite weights" if step is not None
                 else "no checkpoint with finite weights is left, a rerun starts at step 0")
        return (f"{where}: resume with a lower learning rate (e.g. --base-lr {self.cfg.base_lr / 10:g} "
                "--allow-config-change) or check the inputs")

    # ---- training ------------------------------------------------------------------------------------------
    def train_step(self, batch: tuple[torch.Tensor, torch.Tensor], phase=None) -> dict[str, torch.Tensor]:
        """One optimisation step on a batch (uint8 images, dataset indices) already on the device. Returns detached
        loss terms (no sync).

        `phase(name)` is an optional context-manager factory wrapped around each part of the step (the benchmark
        times "augment", "forward_loss", "backward" and "optimizer" with it)."""
        phase = phase or _no_phase
        for group in self.optimizer.param_groups:
            group["lr"] = lr_at(self.step, self.total_steps, self.warmup_steps, self.peak_lr,
                                self.cfg.final_lr_ratio)
        self.method.begin_step(self.step, self.steps_per_epoch)
        if self.cuda_graphs:
            torch.compiler.cudagraph_mark_step_begin()  # the previous step's graph outputs are consumed
        with phase("augment"), torch.no_grad():
            images, ids = batch
            views = self.to_memory_format(self.method.make_views(images, self.rng, ids))
        with phase("forward_loss"):
            m = momentum_at(self.step, self.total_steps, self.cfg.momentum_base)
            own = self.method.momentum_update(m)
            self.momentum = m if own is None else own  # logged
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
                terms, aux = self.loss_fn(views)
        with phase("backward"):
            self.optimizer.zero_grad(set_to_none=True)
            terms["loss"].backward()
        with phase("optimizer"):
            self.optimizer.step()
            self.method.after_step(views, aux)
        self.step += 1
        return {k: v.detach() for k, v in terms.items()}

    def to_memory_format(self, views: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Image views in the network's memory format (channels_last on the fast path)."""
        if not self.channels_last:
            return views
        return {k: v.contiguous(memory_format=torch.channels_last) if v.dim() == 4 else v for k, v in views.items()}

    def _batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's share of the global batch of `step`: (uint8 images, their dataset indices)."""
        epoch, it = self.plan.locate(step)
        if getattr(self, "_order_epoch", None) != epoch:
            self._order = epoch_order(self.cfg.seed, epoch, len(self.images)).to(self.device)
            self._order_epoch = epoch
        ids = self._order[self.plan.rank_slice(it, rank())]
        return self.images[ids], ids

    def fit(self) -> TrainResult:
        cfg = self.cfg
        stop = self.total_steps if cfg.max_steps is None else min(cfg.max_steps, self.total_steps)
        bar = tqdm(total=stop, initial=self.step, desc=f"{cfg.method} {cfg.dataset}", unit="step",
                   disable=not (cfg.progress and is_main_process()), dynamic_ncols=True)
        self.method.train()
        previous_handlers = self._catch_stop_signals()
        self.tensorboard = None
        if cfg.tensorboard and is_main_process() and self.lock:
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
            terms = self.train_step(self._batch(self.step))
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
                    self.confirm()  # these steps' losses came from the weights of the last checkpoint onwards
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
        if is_main_process():
            with open(self.run_dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps(row) + "\n")
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
        from ..data import load_dataset
        seeded_subset(len(load_dataset(cfg.dataset, cfg.data_root, "test")), cfg.eval_test_subset, cfg.seed,
                      "eval_test_subset")
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
