"""The small base shared by SimCLR, BYOL and DSA (which wraps either): encoder, projector, two strong views."""
from __future__ import annotations

import torch
from torch import nn

from ..data.augment import strong_view
from ..distributed import gather_with_grad
from ..models import mlp, momentum_copy
from .base import Batch, DataContext, Method, RunContext, StepRandom, Views


def paired_views(batch: Batch, augment, rng: StepRandom) -> Views:
    """Two views of every image from one pipeline, with independent draws ("view1", "view2")."""
    return Views({"view1": batch.view(augment, rng.device), "view2": batch.view(augment, rng.device)})


class TwoViewMethod(Method):
    """Encoder e and projector g = Linear-BN-ReLU-Linear (SimCLR's and BYOL's head; ctx.proj_hidden, ctx.proj_out).

    Both views come from the project's strong pipeline (the same augmentation for every rival) with independent
    parameters. Subclasses implement `ssl_terms`; the evaluated network is the online encoder e (the one both
    papers keep after training)."""

    def __init__(self, ctx: RunContext, data: DataContext):
        super().__init__()
        self.ctx = ctx
        self.encoder = ctx.encoder()
        self.projector = mlp([self.encoder.out_dim, ctx.proj_hidden, ctx.proj_out], last_bn=False)
        self.augment = strong_view(data.image_size, data.mean, data.std)

    def view_pipelines(self):
        return [self.augment, self.augment]

    def make_views(self, batch: Batch, rng: StepRandom) -> Views:
        return paired_views(batch, self.augment, rng)

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """g(e(x)), unnormalised; each view is its own forward, so BN sees one view's batch (as in ReSA)."""
        return self.projector(self.encoder(x))

    def gather_views(self, *parts: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Each tensor gathered over the ranks (rank order) with gradients flowing back to their rank; the shards
        are equal, so no size exchange (and no host sync) is needed."""
        return tuple(gather_with_grad(t, [t.shape[0]] * self.ctx.world_size) for t in parts)

    def ssl_terms(self, views: Views) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
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

    def momentum_pairs(self):
        return [(self.encoder, self.momentum_encoder), (self.projector, self.momentum_projector)]

    @torch.no_grad()
    def target(self, x: torch.Tensor) -> torch.Tensor:
        """Unnormalised target projection g'(e'(x)); like ReSA's teacher it uses batch statistics."""
        return self.momentum_projector(self.momentum_encoder(x))
