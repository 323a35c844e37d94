"""The contract every method follows, and the online/momentum twin that ReSA-style methods share.

A method is one module: a `Params` dataclass (its typed hyper-parameters) and a `Method` subclass, plus one line in
the registry (methods/__init__.py). The rules it must follow are in `Method`'s docstring; tests/test_contract.py
checks them for every registered method.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..data.augment import ViewAugment
from ..models import build_encoder, build_predictor, build_projector, is_vit, momentum_copy


def host_scalar(value: float, device: torch.device) -> torch.Tensor:
    """A Python float as a 0-d tensor on `device` without a host sync (a pageable host-to-device copy would
    synchronise the stream every step)."""
    t = torch.tensor(value)
    if torch.device(device).type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


@dataclass
class StepRandom:
    """All per-step randomness of a run: `device` drives augmentation and permutations (no host sync);
    `host` draws scalars such as the mixup coefficient (Beta has no torch generator support)."""
    device: torch.Generator
    host: np.random.Generator

    @classmethod
    def create(cls, seed: int, device: torch.device) -> "StepRandom":
        gen = torch.Generator(device=device)
        gen.manual_seed(seed)
        return cls(gen, np.random.default_rng(seed))

    def state_dict(self) -> dict[str, Any]:
        return {"device": self.device.get_state(), "host": self.host.bit_generator.state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.device.set_state(state["device"].cpu())
        self.host.bit_generator.state = state["host"]


@dataclass
class DataContext:
    """What a method may know about the training data when it is built."""
    num_classes: int
    image_size: int                      # the training resolution (every view's side)
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    train_labels: torch.Tensor           # (N,) int64
    classes: list[str]
    # uint8 K x 3 x S x S images of the given training indices, S = image_size on the device-resident path (for a
    # streamed folder: the image resized to image_size * 256/224 and centre-cropped, so device crops fit in it).
    read_images: Callable[[torch.Tensor], torch.Tensor]

    @classmethod
    def of(cls, dataset) -> "DataContext":
        """The context of a device-resident ImageDataset (tests, notebooks)."""
        return cls(num_classes=dataset.num_classes, image_size=int(dataset.images.shape[-1]), mean=dataset.mean,
                   std=dataset.std, train_labels=dataset.labels, classes=dataset.classes,
                   read_images=lambda idx: dataset.images[idx])


@dataclass(frozen=True)
class RunContext:
    """What a method may know about its run, fixed when it is built. Methods read this, never the TrainConfig or
    the process group, so a method is a function of its context, its Params and its data."""
    batch_size: int        # this rank's images per step
    world_size: int
    rank: int
    seed: int
    arch: str              # the networks (TrainConfig's fields of the same names)
    width: int
    zero_pad: bool
    stem: str
    image_size: int
    proj_hidden: int
    proj_out: int
    predictor: bool

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.world_size

    @property
    def offset(self) -> int:
        """This rank's first row in the global batch: ranks own contiguous, equal shares in rank order."""
        return self.batch_size * self.rank

    def encoder(self) -> nn.Module:
        return build_encoder(self.arch, self.width, self.zero_pad, image_size=self.image_size, stem=self.stem)

    @classmethod
    def from_config(cls, cfg, data: DataContext, world_size: int = 1, rank: int = 0) -> "RunContext":
        return cls(batch_size=cfg.batch_size, world_size=world_size, rank=rank, seed=cfg.seed, arch=cfg.arch,
                   width=cfg.width, zero_pad=cfg.zero_pad, stem=cfg.stem, image_size=data.image_size,
                   proj_hidden=cfg.proj_hidden, proj_out=cfg.proj_out, predictor=cfg.predictor)


class Batch:
    """This rank's share of one global batch, as the data path delivers it; `view()` cuts its views.

    Device-resident data: `images` (uint8 B x 3 x H x W) are cropped on the device. Streamed data: the loader has
    already cut one uint8 B x 3 x S x S crop per entry of the method's `view_pipelines()` (boxes from the same crop
    function, seeded by (seed, epoch, index)); `view()` takes them in that order and applies the rest of the
    pipeline. Either way the random draws come from the run's generator for the whole global batch and this
    rank's rows are kept, so views do not depend on the number of ranks."""

    def __init__(self, ids: torch.Tensor, total: int, offset: int, images: torch.Tensor | None = None,
                 crops: list[torch.Tensor] | None = None, pipelines: list[ViewAugment] | None = None):
        if (images is None) == (crops is None):
            raise ValueError("a Batch holds either images (device crops) or crops cut by the loader")
        self.ids, self.total, self.offset, self.images, self.crops = ids, total, offset, images, crops
        self.pipelines = pipelines
        self.taken = 0

    @classmethod
    def of(cls, images: torch.Tensor, ids: torch.Tensor | None = None) -> "Batch":
        """A whole (one-rank) batch of device-resident uint8 images, e.g. in a test or a notebook."""
        ids = torch.arange(images.shape[0], device=images.device) if ids is None else ids
        return cls(ids, images.shape[0], 0, images=images)

    @property
    def size(self) -> int:
        return int(self.ids.shape[0])

    @property
    def device(self) -> torch.device:
        return self.ids.device

    def view(self, augment: ViewAugment, generator: torch.Generator) -> torch.Tensor:
        """The next view: float, normalised, B x 3 x S x S."""
        k, self.taken = self.taken, self.taken + 1
        if self.crops is None:
            return augment(self.images, generator, total=self.total, offset=self.offset)
        if self.pipelines is None or k >= len(self.crops) or self.pipelines[k] is not augment:
            raise RuntimeError(f"view {k} does not follow the method's view_pipelines() (the loader cut "
                               f"{len(self.crops)} crops in that order)")
        return augment(self.crops[k], generator, total=self.total, offset=self.offset, cropped=True)


@dataclass
class Views:
    """What `make_views` hands the loss: the only thing that crosses from the eager part of a step to the
    compiled one. Every tensor is on the device; none needs gradients."""
    images: dict[str, torch.Tensor]      # augmented image views, float N x 3 x S x S (the memory format is the
                                         # trainer's): what the networks see
    draws: dict[str, torch.Tensor] = field(default_factory=dict)     # random draws made outside the compiled
                                         # loss: permutations, mixing coefficients, mask uniforms
    features: dict[str, torch.Tensor] = field(default_factory=dict)  # fixed, gradient-free features of the views
                                         # (DSA's prior)
    ids: torch.Tensor | None = None      # dataset indices of this rank's rows (methods with per-image state)

    def to(self, dtype: torch.dtype) -> "Views":
        """A copy with every floating tensor cast (e.g. float64 for the literal-equation tests)."""
        cast = lambda d: {k: v.to(dtype) if v.is_floating_point() else v for k, v in d.items()}  # noqa: E731
        return Views(cast(self.images), cast(self.draws), cast(self.features), self.ids)


class Method(nn.Module):
    """Base class of every method. A subclass sets `name` and `Params` (a dataclass whose fields are typed: the
    CLI, --config files and notebooks are converted to those types) and follows these rules:

    Building. `__init__(ctx: RunContext, params, data: DataContext)`. Everything a method keeps across steps is a
    parameter or a buffer (so checkpoints resume it exactly); it reads the run only through `ctx` (global batch,
    rank, world size, seed, network sizes) and the data only through `data`.

    A step, in the trainer's order:
    1. `begin_step(step, steps_per_epoch)`: bookkeeping that is a pure function of the global step.
    2. `make_views(batch, rng) -> Views`: all randomness of the step, eager, from `rng` only. Image views come
       from `batch.view(pipeline, rng.device)`, taken in the order of `view_pipelines()` (a streamed loader cuts
       the crops in that order). Draws for the global batch are made in full and this rank's rows kept
       (`ctx.offset`), so a run on w ranks draws what one rank draws.
    3. The trainer's EMA: every (online, momentum) pair of `momentum_pairs()` moves by `momentum(m)`, where m is
       the trainer's cosine schedule (a method with its own constant returns it); before the forward pass.
    4. `loss_terms(views) -> (terms, updates)`: the differentiable part, compiled on the GPU, no host syncs.
       `terms` holds scalar tensors: "loss" (the total, backpropagated) and the named parts that are logged (the
       trainer averages them over ranks). `updates` holds detached tensors for `after_step` (e.g. embeddings to
       enqueue). Cross-rank statistics use distributed.gather_* with the global batch in rank order.
    5. Backward and the optimiser step, then `after_step(views, updates)`: memory writes.

    Evaluation and bench rely on: `eval_encoder()` (the network whose features are evaluated, with `out_dim`),
    `eval_projector()` (the head after it, an nn.Sequential), the "loss" term, and `name`.
    Run files: `run_files()` names the JSON files the method owns (e.g. exemplars.json); the run directory writes
    them once, when the run starts."""
    name: str = ""
    Params: type = object

    def begin_step(self, step: int, steps_per_epoch: int) -> None:
        """Called before each step with the global step count (a pure function of it, so resume is exact)."""

    def view_pipelines(self) -> list[ViewAugment]:
        """The augmentation of every view cut from a training image, in the order make_views takes them."""
        raise NotImplementedError

    def make_views(self, batch: Batch, rng: StepRandom) -> Views:
        raise NotImplementedError

    def forward(self, views: Views):
        # DistributedDataParallel (and torch.compile) wrap a module's forward: it is the loss.
        return self.loss_terms(views)

    def momentum_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        """(online, momentum copy) pairs the trainer moves by EMA before each forward; none by default."""
        return []

    def momentum(self, scheduled: float) -> float:
        """The EMA momentum of this step, given the trainer's schedule (logged)."""
        return scheduled

    def loss_terms(self, views: Views) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        raise NotImplementedError

    def after_step(self, views: Views, updates: dict[str, torch.Tensor]) -> None:
        pass

    def eval_encoder(self) -> nn.Module:
        """The network whose features are evaluated (the momentum encoder for ReSA-style methods)."""
        raise NotImplementedError

    def eval_projector(self) -> nn.Sequential:
        """The projection head that follows eval_encoder() (for the clustering analysis and fine-tuning protocols,
        which use its layers)."""
        raise NotImplementedError

    def run_files(self) -> dict[str, dict[str, Any]]:
        """{file name: JSON-able content} the method owns in the run directory (e.g. the exemplar indices)."""
        return {}


class TwinMethod(Method):
    """Online encoder+projector (+ optional predictor) and their momentum copy."""

    def __init__(self, ctx: RunContext, data: DataContext):
        super().__init__()
        self.ctx = ctx
        self.encoder = ctx.encoder()
        vit = is_vit(ctx.arch)  # ReSA App. B: BN-free GELU heads for ViT encoders
        self.projector = build_projector(self.encoder.out_dim, ctx.proj_hidden, ctx.proj_out, vit=vit)
        self.predictor = build_predictor(ctx.proj_out, ctx.proj_hidden, vit=vit) if ctx.predictor else None
        self.momentum_encoder = momentum_copy(self.encoder)
        self.momentum_projector = momentum_copy(self.projector)

    def momentum_pairs(self):
        # Moved before the momentum forward, i.e. with the parameters of the previous optimiser step (ReSA).
        return [(self.encoder, self.momentum_encoder), (self.projector, self.momentum_projector)]

    def embed(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Online (h, g(h)) for one forward; BN sees each call as its own batch (ReSA). g(h) is unnormalised."""
        h = self.encoder(x)
        return h, self.projector(h)

    def predict(self, g: torch.Tensor) -> torch.Tensor:
        """normalize(pred(g)) with a predictor, else normalize(g): the online embedding used by L_cluster."""
        return F.normalize(g if self.predictor is None else self.predictor(g), dim=1)

    @torch.no_grad()
    def momentum_embed(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # The teacher runs in train mode (batch statistics), like ReSA's momentum network.
        h = self.momentum_encoder(x)
        return h, F.normalize(self.momentum_projector(h), dim=1)

    def eval_encoder(self) -> nn.Module:
        return self.momentum_encoder

    def eval_projector(self) -> nn.Sequential:
        return self.momentum_projector
