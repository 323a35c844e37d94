"""SimCLR (Chen et al., ICML'20): NT-Xent over the two views of the global batch.

Deviations from the paper, shared by every rival in this project: the trainer's SGD (lr 0.3 x B/256, momentum 0.9,
weight decay 1e-4, warm-up + cosine) instead of LARS, and the project's strong augmentation for both views.
The head is the paper's 2-layer MLP (ctx.proj_hidden, ctx.proj_out), without the DSA/W-MSE code's extra BN.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..losses import nt_xent
from .base import DataContext, RunContext
from .two_view import TwoViewMethod


@dataclass
class SimCLRParams:
    temperature: float = 0.5   # CIFAR value (SimCLR appendix B.9; the DSA code's tau)


class SimCLR(TwoViewMethod):
    name = "simclr"
    Params = SimCLRParams

    def __init__(self, ctx: RunContext, params: SimCLRParams, data: DataContext):
        super().__init__(ctx, data)
        self.params = params

    def ssl_terms(self, views):
        z1, z2 = self.project(views.images["view1"]), self.project(views.images["view2"])
        n = z1.shape[0]
        # The other ranks' views are negatives too (2N-2 per anchor); their gradients flow back to their ranks.
        loss = nt_xent(z1, z2, *self.gather_views(z1, z2), offset=self.ctx.offset,
                       temperature=self.params.temperature)
        return loss, z1, z2
