"""BYOL (Grill et al., NeurIPS'20): online encoder + projector + predictor regress an EMA target's projections.

The target follows the online network with the trainer's momentum schedule (cosine 0.996 -> 1 per step, BYOL's
own). Deviations from the paper, shared by every rival here: the trainer's SGD (lr 0.3 x B/256, momentum 0.9,
weight decay 1e-4) instead of LARS, and the project's strong augmentation for both views (BYOL's views differ in
blur and solarisation). Projector and predictor are the paper's Linear-BN-ReLU-Linear (ctx.proj_hidden, ctx.proj_out);
ctx.predictor is ignored, BYOL always has one. Like ReSA's teacher, the target uses batch statistics.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..losses import byol_loss
from ..models import build_predictor
from .base import DataContext, RunContext
from .two_view import MomentumTwoViewMethod


@dataclass
class BYOLParams:
    """BYOL's only hyperparameter, the target momentum, is the trainer's schedule (TrainConfig.momentum_base)."""


class BYOL(MomentumTwoViewMethod):
    name = "byol"
    Params = BYOLParams

    def __init__(self, ctx: RunContext, params: BYOLParams, data: DataContext):
        super().__init__(ctx, data)
        self.params = params
        self.predictor = build_predictor(ctx.proj_out, ctx.proj_hidden)
        self.add_target()

    def ssl_terms(self, views):
        z1, z2 = self.project(views.images["view1"]), self.project(views.images["view2"])
        loss = byol_loss(self.predictor(z1), self.predictor(z2), self.target(views.images["view1"]),
                         self.target(views.images["view2"]))
        return loss, z1, z2
