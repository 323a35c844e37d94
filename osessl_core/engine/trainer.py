"""The training loop: one run directory, resumable, deterministic given the seed.

Run directory layout: config.json (resolved), provenance.json, method_state.json (the method's extra_state, if
any), exemplars.json (if the method uses exemplars),
metrics.jsonl (one line per log interval), checkpoint.pt (atomic, latest), eval.json (after training).
"""
from __future__ import annotations

import contextlib
import json
import math
import time
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from ..config import TrainConfig
from ..data import load_dataset
from ..data.augment import ViewAugment
from ..distributed import agree_any, all_reduce_, barrier, is_distributed, is_main_process, rank, world_size
from ..methods import DataContext, Method, StepRandom, build_method
from ..models import momentum_at
from ..models.sync_bn import convert_sync_batchnorm
from ..provenance import provenance
from .checkpoint import atomic_write_json, check_compatible, load_checkpoint, save_checkpoint
from .schedule import lr_at, scaled_lr


def _no_phase(name):
    return contextlib.nullcontext()


class NonFiniteLossError(FloatingPointError):
    pass


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
        raise RuntimeError(f"device {name!r} requested but CUDA is not available; use --device cpu")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())  # torchrun: set to LOCAL_RANK by init_from_env
    return device


def epoch_order(seed: int, epoch: int, n: int) -> torch.Tensor:
    """The data order of one epoch: a function of (seed, epoch) only, so a resumed run sees the same batches."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))


def seeded_subset(n_total: int, n: int, seed: int) -> torch.Tensor:
    if n > n_total:
        raise ValueError(f"subset={n} is larger than the dataset ({n_total} images)")
    return torch.randperm(n_total, generator=torch.Generator().manual_seed(seed))[:n].sort().values


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

    def __init__(self, cfg: TrainConfig, train_set=None):
        self.cfg = cfg
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
        self.train_set = train_set if train_set is not None else load_train_data(cfg)
        n = len(self.train_set)
        self.global_batch = cfg.batch_size * world_size()
        if self.global_batch > n:
            raise ValueError(f"global batch {self.global_batch} exceeds the {n} training images")
        self.steps_per_epoch = n // self.global_batch  # drop_last
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
        self._resume_or_start()

    # ---- run directory -------------------------------------------------------------------------------------
    @property
    def checkpoint_path(self) -> Path:
        return self.run_dir / "checkpoint.pt"

    def _resume_or_start(self) -> None:
        cfg = self.cfg
        if cfg.resume and self.checkpoint_path.exists():
            state = load_checkpoint(self.checkpoint_path)
            check_compatible({**state["config"], "global_batch": state["global_batch"]},
                             {**cfg.to_dict(), "global_batch": self.global_batch},
                             TrainConfig.IDENTITY + ("global_batch",), self.checkpoint_path)
            try:
                self.method.load_state_dict(state["model"])
            except RuntimeError as e:
                raise RuntimeError(f"checkpoint {self.checkpoint_path} does not fit this model: {e}") from e
            self.optimizer.load_state_dict(state["optimizer"])
            self.rng.load_state_dict(state["rng"])
            self.step = state["step"]
            self._trim_metrics(self.step)
            return
        if is_main_process():
            self.run_dir.mkdir(parents=True, exist_ok=True)
            cfg.save(self.run_dir / "config.json")
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

    def _trim_metrics(self, step: int) -> None:
        """Drop metric lines logged after the checkpoint we resume from (they will be logged again)."""
        path = self.run_dir / "metrics.jsonl"
        if path.exists() and is_main_process():
            keep = [l for l in path.read_text().splitlines() if l and json.loads(l)["step"] <= step]
            path.write_text("".join(l + "\n" for l in keep))

    def save(self) -> None:
        if is_main_process():
            save_checkpoint(self.checkpoint_path, {
                "step": self.step, "global_batch": self.global_batch, "world_size": world_size(),
                "config": self.cfg.to_dict(), "model": self.method.state_dict(),
                "optimizer": self.optimizer.state_dict(), "rng": self.rng.state_dict()})

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
        epoch, it = divmod(step, self.steps_per_epoch)
        if getattr(self, "_order_epoch", None) != epoch:
            self._order = epoch_order(self.cfg.seed, epoch, len(self.images)).to(self.device)
            self._order_epoch = epoch
        b, r, w = self.cfg.batch_size, rank(), world_size()
        start = (it * w + r) * b  # each rank takes its slice of the global batch
        ids = self._order[start:start + b]
        return self.images[ids], ids

    def fit(self) -> TrainResult:
        cfg = self.cfg
        stop = self.total_steps if cfg.max_steps is None else min(cfg.max_steps, self.total_steps)
        sums: dict[str, torch.Tensor] = {}
        count, t0 = 0, time.perf_counter()
        t_fit = t0
        bar = tqdm(total=stop, initial=self.step, desc=f"{cfg.method} {cfg.dataset}", unit="step",
                   disable=not (cfg.progress and is_main_process()), dynamic_ncols=True)
        self.method.train()
        while self.step < stop:
            terms = self.train_step(self._batch(self.step))
            for k, v in terms.items():  # accumulate on the device: no host sync per step
                sums[k] = sums[k] + v if k in sums else v.clone()
            count += 1
            bar.update(1)
            end_of_epoch = self.step % self.steps_per_epoch == 0
            flush = self.step % cfg.log_every == 0 or end_of_epoch or self.step == stop
            # Checked at log points only, and agreed across ranks so that they all stop at the same step.
            out_of_time = flush and cfg.time_limit is not None and agree_any(
                time.perf_counter() - t_fit > cfg.time_limit, self.device)
            checkpoint = ((cfg.ckpt_every and self.step % cfg.ckpt_every == 0) or end_of_epoch
                          or self.step == stop or out_of_time)
            if flush or checkpoint:
                if count:
                    row = self._log(sums, count, time.perf_counter() - t0)
                    bar.set_postfix(loss=f"{row['loss']:.4f}", lr=f"{row['lr']:.3g}")
                sums, count, t0 = {}, 0, time.perf_counter()
            if checkpoint:  # only after the finiteness check in _log
                self.save()
            if out_of_time:
                break
        bar.close()
        return TrainResult(self.run_dir, self.method, self.step, self.metrics)

    def _log(self, sums: dict[str, torch.Tensor], count: int, seconds: float) -> dict[str, Any]:
        keys = sorted(sums)
        totals = all_reduce_(torch.stack([sums[k].double() for k in keys])) / world_size()  # mean over ranks
        values = {k: float(v) / count for k, v in zip(keys, totals.tolist())}  # the one host sync per interval
        for k, v in values.items():
            if not math.isfinite(v):
                raise NonFiniteLossError(
                    f"loss term {k!r} became {v} before step {self.step} (run {self.run_dir}); the last "
                    f"checkpoint is intact: lower the learning rate or check the inputs, then resume")
        row = {"step": self.step, "epoch": self.step / self.steps_per_epoch,
               "lr": self.optimizer.param_groups[0]["lr"],
               "momentum": self.momentum,
               **values, "steps": count, "seconds": seconds,
               "images_per_s": count * self.global_batch / max(seconds, 1e-9)}
        self.metrics.append(row)
        if is_main_process():
            with open(self.run_dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps(row) + "\n")
        return row


def load_run(run_dir: str | Path, **overrides) -> Trainer:
    """A run directory's model and state without training: its config.json with `overrides`, resumed from its
    checkpoint (not compiled). Used to evaluate or inspect finished or partial runs."""
    run_dir = Path(run_dir)
    if not (run_dir / "checkpoint.pt").exists():
        raise FileNotFoundError(f"no checkpoint.pt in {run_dir}")
    cfg = TrainConfig.load(run_dir / "config.json")
    return Trainer(replace(cfg, **{"run_dir": str(run_dir), "resume": True, "progress": False, "compile": False,
                                   **overrides}))


def train(cfg: TrainConfig, train_set=None) -> TrainResult:
    """Train (resuming from `cfg.run_dir` if it holds a checkpoint), then evaluate as configured."""
    trainer = Trainer(cfg, train_set)
    result = trainer.fit()
    barrier()
    if (cfg.eval_knn or cfg.eval_linear) and is_main_process() and trainer.step >= trainer.total_steps:
        from .evaluate import evaluate_run
        result.eval = evaluate_run(trainer.method, cfg, trainer.train_set, trainer.device)
        rows = [json.loads(l) for l in (trainer.run_dir / "metrics.jsonl").read_text().splitlines() if l]
        atomic_write_json(trainer.run_dir / "eval.json", {
            **result.eval, "step": trainer.step, "epochs": cfg.epochs,
            "train_seconds": sum(r["seconds"] for r in rows),  # across resumed processes; excludes start-up
            "provenance": provenance(trainer.device)})
    return result
