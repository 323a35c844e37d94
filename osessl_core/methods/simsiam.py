"""SimSiam (Chen & He, CVPR'21): one encoder + projector on both views, a predictor h on one side, stop-gradient on
the other, L = 1/2 D(p1, sg(z2)) + 1/2 D(p2, sg(z1)) with D = -cos.

Head, following the paper's CIFAR appendix: a 2-layer projection MLP (the ImageNet one has 3) with BN on every
layer including the output fc (affine-free, no ReLU), and a bottleneck predictor Linear-BN-ReLU-Linear whose hidden
width is 1/4 of its input (the paper's 2048 -> 512 -> 2048; solo-learn's cifar/simsiam.yaml: 2048 / 2048 / 512).
Widths are the shared ctx.proj_hidden / ctx.proj_out of every rival (paper and solo-learn: 2048 / 2048), so the
default predictor is 512 -> 128 -> 512; ctx.predictor is ignored, SimSiam always has one. The evaluated network is
the encoder (the one the paper keeps). The loss is per sample, so nothing is gathered under DDP.

Deviations from the paper's CIFAR recipe (SGD, base lr 0.03 x B/256, weight decay 5e-4, batch 512, 800 epochs;
solo-learn: SGD lr 0.5, wd 1e-5, batch 256, 1000 epochs), shared by every rival here: the trainer's SGD (lr 0.3 x
B/256, momentum 0.9, weight decay 1e-4 on every parameter, BN included, warm-up + cosine), the predictor's lr decays
with the rest (the paper and solo-learn keep it constant), and the project's strong augmentation for both views.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..losses import simsiam_loss
from ..models import build_predictor, mlp
from .base import DataContext, RunContext
from .two_view import TwoViewMethod


@dataclass
class SimSiamParams:
    pred_hidden: int | None = None   # predictor hidden width; None = proj_out // 4, the paper's 2048 -> 512 ratio


class SimSiam(TwoViewMethod):
    name = "simsiam"
    Params = SimSiamParams

    def __init__(self, ctx: RunContext, params: SimSiamParams, data: DataContext):
        super().__init__(ctx, data)
        self.params = params
        self.projector = mlp([self.encoder.out_dim, ctx.proj_hidden, ctx.proj_out], last_bn=True)
        self.predictor = build_predictor(ctx.proj_out, params.pred_hidden or max(ctx.proj_out // 4, 1))

    def ssl_terms(self, views):
        z1, z2 = self.project(views.images["view1"]), self.project(views.images["view2"])
        return simsiam_loss(self.predictor(z1), self.predictor(z2), z1, z2), z1, z2
