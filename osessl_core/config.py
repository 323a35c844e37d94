"""Run configuration: one flat dataclass for the engine plus a per-method parameter dataclass.

The resolved config (with method parameters filled in) is written into every run directory, and a resumed run
refuses a checkpoint whose defining fields differ.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any


@dataclass
class TrainConfig:
    # what to train
    method: str = "osessl"
    dataset: str = "cifar10"
    data_root: str = "../shared/data"
    subset: int | None = None          # train on a seeded random subset of this many images (CPU smoke runs)
    method_args: dict[str, Any] = field(default_factory=dict)
    # networks
    arch: str = "resnet18"
    width: int = 64                    # first-stage channels; 64 is the standard ResNet
    zero_pad: bool = True              # ReSA's CIFAR quirk: pad 32x32 inputs to 34x34
    proj_hidden: int = 2048
    proj_out: int = 512
    predictor: bool = False            # ReSA uses one only on ImageNet
    # optimisation (ReSA CIFAR defaults, spec 1.4)
    epochs: int = 1000
    batch_size: int = 256
    base_lr: float = 0.3               # scaled by batch_size * world_size / 256
    weight_decay: float = 1e-4
    sgd_momentum: float = 0.9
    warmup_epochs: float = 2.0
    final_lr_ratio: float = 0.1
    momentum_base: float = 0.996
    # execution
    seed: int = 0
    device: str = "auto"               # auto | cpu | cuda | cuda:N
    amp: bool | None = None            # bf16 autocast; None = on for CUDA
    compile: bool | None = None        # torch.compile the loss and the augmentations; None = on for CUDA
    cuda_graphs: bool | None = None    # replay the compiled step as CUDA graphs; None = on for compiled 1-GPU runs
    channels_last: bool | None = None  # None = on for CUDA
    tf32: bool | None = None           # TF32 matmuls/convolutions in fp32 code; None = on for CUDA
    max_steps: int | None = None       # stop early (the schedules still use the full length)
    time_limit: float | None = None    # seconds of training in this process; then checkpoint and exit (resumable)
    # run directory and bookkeeping
    run_dir: str = "runs/default"
    resume: bool = True
    ckpt_every: int = 0                # steps between checkpoints; 0 = once per epoch
    log_every: int = 50
    progress: bool = True
    # evaluation after training
    eval_knn: bool = True
    eval_linear: bool = False
    linear_epochs: int = 500
    eval_test_subset: int | None = None  # evaluate on a seeded subset of the test split (CPU smoke runs)

    # Fields that define the learning problem: a checkpoint is only resumable if these match.
    # The per-rank batch_size is not among them: the global batch is checked instead, so a run can resume on a
    # different number of ranks when batch_size x world_size is unchanged.
    IDENTITY = ("method", "dataset", "subset", "method_args", "arch", "width", "zero_pad", "proj_hidden", "proj_out",
                "predictor", "seed")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown config field(s) {unknown}; valid fields: {sorted(known)}")
        return cls(**d)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True))

    @classmethod
    def load(cls, path: str | Path) -> "TrainConfig":
        return cls.from_dict(json.loads(Path(path).read_text()))


def resolve_params(params_cls: type, overrides: dict[str, Any], method: str):
    """Build a method's parameter dataclass from user overrides, rejecting misspelled names."""
    known = {f.name: f for f in fields(params_cls)}
    unknown = sorted(set(overrides) - set(known))
    if unknown:
        raise ValueError(f"unknown parameter(s) {unknown} for method {method!r}; valid: {sorted(known)}")
    return params_cls(**overrides)
