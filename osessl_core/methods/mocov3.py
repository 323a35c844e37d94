"""MoCo v3 (Chen, Xie & He, ICCV'21) for ResNets: an online encoder + projector + predictor gives queries q, a
momentum encoder + projector gives keys k, and L = ctr(q1, k2) + ctr(q2, k1) with ctr the InfoNCE over the keys of
the global batch (gathered from every rank, no gradient) at temperature tau, scaled by 2 tau.

Heads as in the official ResNet code and solo-learn: projector Linear-BN-ReLU-Linear-BN (affine-free output BN,
SimCLR's design), predictor Linear-BN-ReLU-Linear; both at the shared widths ctx.proj_hidden / ctx.proj_out (the
paper and solo-learn's cifar/mocov3.yaml: 4096 / 256, predictor hidden 4096); ctx.predictor is ignored, MoCo v3
always has one. The momentum networks follow the trainer's cosine schedule from TrainConfig.momentum_base to 1, as BYOL's
target does (solo-learn's CIFAR config starts at 0.99: `--momentum-base 0.99`); like ReSA's teacher they use batch
statistics. The evaluated network is the online (base) encoder, the one the paper's linear probe loads.

Deviations from the published CIFAR recipe (solo-learn: LARS, lr 0.3, weight decay 1e-6 with none on BN and
biases, asymmetric augmentation), shared by every rival here: the trainer's SGD (lr 0.3 x B/256, momentum 0.9,
weight decay 1e-4 on every parameter, warm-up + cosine) and the project's strong augmentation for both views.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..distributed import gather_nograd
from ..losses import mocov3_loss
from ..models import build_predictor, mlp
from .base import DataContext, RunContext
from .two_view import MomentumTwoViewMethod


@dataclass
class MoCoV3Params:
    temperature: float = 0.2   # solo-learn's cifar/mocov3.yaml (the official ResNet-50 ImageNet recipe: 1.0)


class MoCoV3(MomentumTwoViewMethod):
    name = "mocov3"
    Params = MoCoV3Params

    def __init__(self, ctx: RunContext, params: MoCoV3Params, data: DataContext):
        super().__init__(ctx, data)
        self.params = params
        self.projector = mlp([self.encoder.out_dim, ctx.proj_hidden, ctx.proj_out], last_bn=True)
        self.predictor = build_predictor(ctx.proj_out, ctx.proj_hidden)
        self.add_target()

    def keys(self, x: torch.Tensor) -> torch.Tensor:
        """The global batch's momentum keys (rank order)."""
        return gather_nograd(self.target(x))

    def ssl_terms(self, views):
        z1, z2 = self.project(views.images["view1"]), self.project(views.images["view2"])
        loss = mocov3_loss(self.predictor(z1), self.predictor(z2), self.keys(views.images["view1"]),
                           self.keys(views.images["view2"]), offset=self.ctx.offset,
                           temperature=self.params.temperature)
        return loss, z1, z2
