"""Barlow Twins (Zbontar et al., ICML'21): the cross-correlation C of the two views' batch-standardised
embeddings is driven to the identity, L = sum_i (1 - C_ii)^2 + lambda sum_{i != j} C_ij^2.

C is computed over the global batch: the embeddings are gathered from every rank with gradient, so N ranks give
the 1-process loss (the official code gets this with SyncBatchNorm and an all-reduce of C; lightly's and
solo-learn's distributed versions standardise per rank, which is not the global loss). Projector: the paper's
3-layer MLP, Linear-BN-ReLU x 2 then Linear, at the shared widths ctx.proj_hidden / ctx.proj_out (paper: 8192 x 3;
solo-learn's cifar/barlow.yaml: 2048 x 3). The evaluated network is the encoder (the one the paper keeps).

The loss is scaled by `scale_loss` = 0.1, solo-learn's CIFAR value (the configuration behind the paper's Table 1
number); the paper's loss is unscaled (`-m scale_loss=1`). Deviations from the published recipe (LARS, lr 0.2 /
0.0048 for weights / biases x B/256, weight decay 1.5e-6 with none on BN and biases; solo-learn CIFAR: LARS lr
0.3, wd 1e-4, asymmetric augmentation), shared by every rival here: the trainer's SGD (lr 0.3 x B/256, momentum
0.9, weight decay 1e-4 on every parameter, warm-up + cosine) and the project's strong augmentation for both views.
Under plain SGD the loss scale acts as a learning-rate factor (LARS is nearly invariant to it).
"""
from __future__ import annotations

from dataclasses import dataclass

from ..losses import barlow_twins_loss
from ..models import mlp
from .base import DataContext, RunContext
from .two_view import TwoViewMethod


@dataclass
class BarlowParams:
    lambd: float = 5e-3       # the paper's lambda (official code and solo-learn: 0.0051)
    scale_loss: float = 0.1   # solo-learn's cifar/barlow.yaml; 1 = the paper's unscaled loss


class BarlowTwins(TwoViewMethod):
    name = "barlow"
    Params = BarlowParams

    def __init__(self, ctx: RunContext, params: BarlowParams, data: DataContext):
        super().__init__(ctx, data)
        self.params = params
        self.projector = mlp([self.encoder.out_dim, ctx.proj_hidden, ctx.proj_hidden, ctx.proj_out], last_bn=False)

    def ssl_terms(self, views):
        z1, z2 = self.project(views.images["view1"]), self.project(views.images["view2"])
        loss = barlow_twins_loss(*self.gather_views(z1, z2), lambd=self.params.lambd)
        return self.params.scale_loss * loss, z1, z2
