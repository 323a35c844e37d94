"""The small base shared by SimCLR, BYOL and DSA (which wraps either): encoder, projector, two strong views."""
from __future__ import annotations

import torch
from torch import nn

from ..data.augment import strong_view
from ..distributed import gather_with_grad, world_size
from ..models import build_encoder, ema_update_, mlp, momentum_copy
from .base import DataContext, Method, StepRandom, global_rows


class TwoViewMethod(Method):
    """Encoder e and projector g = Linear-BN-ReLU-Linear (SimCLR's and BYOL's head; cfg.proj_hidden, cfg.proj_out).

    Both views come from the project's strong pipeline (the same augmentation for every rival) with independent
    parameters. Subclasses implement `ssl_terms`; the evaluated network is the online encoder e (the one both
    papers keep after training)."""

    def __init__(self, cfg, data: DataContext):
        super().__init__()
        self.encoder = build_encoder(cfg.arch, cfg.width, cfg.zero_pad)
        self.projector = mlp([self.encoder.out_dim, cfg.proj_hidden, cfg.proj_out], last_bn=False)
        self.augment = strong_view(data.image_size, data.mean, data.std)

    def make_views(self, images: torch.Tensor, rng: StepRandom, ids: torch.Tensor) -> dict[str, torch.Tensor]:
        shard = global_rows(images.shape[0])
        return {"view1": self.augment(images, rng.device, **shard), "view2": self.augment(images, rng.device, **shard)}

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """g(e(x)), unnormalised; each view is its own forward, so BN sees one view's batch (as in ReSA)."""
        return self.projector(self.encoder(x))

    @staticmethod
    def gather_views(*parts: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Each tensor gathered over the ranks (rank order) with gradients flowing back to their rank; the shards
        are equal, so no size exchange (and no host sync) is needed."""
        return tuple(gather_with_grad(t, [t.shape[0]] * world_size()) for t in parts)

    def ssl_terms(self, views: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(L_ssl, z1, z2): the method's loss and the projector outputs of the two views, on which DSA acts."""
        raise NotImplementedError

    def loss_terms(self, views):
        loss, _, _ = self.ssl_terms(views)
        return {"loss": loss, "ssl": loss.detach()}, {}

    def eval_encoder(self) -> nn.Module:
        return self.encoder

    def eval_projector(self) -> nn.Sequential:
        return self.projector


class MomentumTwoViewMethod(TwoViewMethod):
    """A TwoViewMethod with an EMA target of its encoder and projector (BYOL, MoCo v3), following the trainer's
    momentum schedule. Subclasses call `add_target()` once their projector is final."""

    def add_target(self) -> None:
        self.momentum_encoder = momentum_copy(self.encoder)
        self.momentum_projector = momentum_copy(self.projector)

    def momentum_update(self, m: float) -> None:
        ema_update_(self.momentum_encoder, self.encoder, m)
        ema_update_(self.momentum_projector, self.projector, m)

    @torch.no_grad()
    def target(self, x: torch.Tensor) -> torch.Tensor:
        """Unnormalised target projection g'(e'(x)); like ReSA's teacher it uses batch statistics."""
        return self.momentum_projector(self.momentum_encoder(x))
