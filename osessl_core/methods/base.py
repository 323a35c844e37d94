"""The interface every method implements, and the online/momentum twin that ReSA-style methods share.

The engine calls, per step: `method.begin_step(step, steps_per_epoch)` (epoch-level bookkeeping, e.g. retraining
an auxiliary head), `views = method.make_views(images_u8, rng, ids)` (augmentation, mixing and any other
randomness, drawn from the run's generators; `ids` are the batch's dataset indices), `method.momentum_update(m)`,
`terms, aux = method.loss_terms(views)` (the differentiable part, compiled on GPU: scalar terms including the total
"loss", plus auxiliary tensors), backward and the optimiser step, then `method.after_step(views, aux)` (memory
updates). Everything a method keeps across steps lives in its parameters and buffers, so checkpoints resume it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..distributed import rank, world_size
from ..models import build_encoder, build_predictor, build_projector, ema_update_, momentum_copy


def global_rows(n: int) -> dict[str, int]:
    """ViewAugment's `total`/`offset` for this rank's n images: parameters are drawn for the global batch from the
    shared generator and this rank's rows kept, so views do not depend on the world size."""
    return {"total": n * world_size(), "offset": n * rank()}


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
    """What a method may know about the data when it is built."""
    num_classes: int
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    train_images: torch.Tensor   # uint8 N x 3 x H x W (for exemplar selection)
    train_labels: torch.Tensor
    classes: list[str]


class Method(nn.Module):
    """Base class: subclasses set `name`, `Params` (a dataclass) and implement the four step hooks."""
    name: str = ""
    Params: type = object

    def begin_step(self, step: int, steps_per_epoch: int) -> None:
        """Called before each step with the global step count (a pure function of it, so resume is exact)."""

    def make_views(self, images: torch.Tensor, rng: StepRandom, ids: torch.Tensor) -> dict[str, torch.Tensor]:
        """images: this rank's uint8 batch (B x 3 x H x W); ids: their indices in the training set (B,)."""
        raise NotImplementedError

    def forward(self, views: dict[str, torch.Tensor]):
        # DistributedDataParallel (and torch.compile) wrap a module's forward: it is the loss.
        return self.loss_terms(views)

    def momentum_update(self, m: float) -> float | None:
        """EMA step of any teacher, given the trainer's scheduled momentum `m`. Returns the momentum actually used
        if the method has its own (it is logged), else None."""
        return None

    def loss_terms(self, views: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def after_step(self, views: dict[str, torch.Tensor], aux: dict[str, torch.Tensor]) -> None:
        pass

    def eval_encoder(self) -> nn.Module:
        """The network whose features are evaluated (the momentum encoder for ReSA-style methods)."""
        raise NotImplementedError

    def eval_projector(self) -> nn.Sequential:
        """The projection head that follows eval_encoder() (for the clustering analysis and fine-tuning protocols,
        which use its layers)."""
        raise NotImplementedError

    def extra_state(self) -> dict[str, Any]:
        """JSON-able facts saved with the run (e.g. exemplar indices)."""
        return {}


class TwinMethod(Method):
    """Online encoder+projector (+ optional predictor) and their momentum copy."""

    def __init__(self, cfg, data: DataContext):
        super().__init__()
        self.encoder = build_encoder(cfg.arch, cfg.width, cfg.zero_pad)
        self.projector = build_projector(self.encoder.out_dim, cfg.proj_hidden, cfg.proj_out)
        self.predictor = build_predictor(cfg.proj_out, cfg.proj_hidden) if cfg.predictor else None
        self.momentum_encoder = momentum_copy(self.encoder)
        self.momentum_projector = momentum_copy(self.projector)

    def online(self) -> list[nn.Module]:
        return [self.encoder, self.projector]

    def momentum_update(self, m: float) -> None:
        # Called before the momentum forward, i.e. with the parameters of the previous optimiser step (ReSA).
        ema_update_(self.momentum_encoder, self.encoder, m)
        ema_update_(self.momentum_projector, self.projector, m)

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
