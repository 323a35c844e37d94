"""VICReg (Bardes, Ponce & LeCun, ICLR'22): L = lambda s(Z, Z') + mu [v(Z) + v(Z')] + nu [c(Z) + c(Z')], the
invariance MSE, the variance hinge max(0, 1 - sqrt(Var + 1e-4)) per dimension and the squared off-diagonal
covariances / d, each regulariser per branch.

The variance and covariance terms are over the global batch: the embeddings are gathered from every rank with
gradient (as lightly's gather_distributed does), so N ranks give the 1-process loss; the invariance term is per
sample. Following the paper's eq. 6 (and solo-learn), the two branches' variance terms are summed; the official
code and lightly halve that sum. Expander: the paper's 3-layer MLP, Linear-BN-ReLU x 2 then Linear, at the shared
widths ctx.proj_hidden / ctx.proj_out (paper: 8192 x 3; solo-learn's cifar/vicreg.yaml: 2048 x 3). The evaluated
network is the encoder (the one the paper keeps). The three unweighted terms are logged as inv, var and cov.

The loss is scaled by `scale_loss` = 1/25 (`-m scale_loss=1` is the paper's loss). Under the shared SGD the
unscaled loss diverges within the warm-up: the covariance term is quartic in the embedding scale, and once a step
inflates the embeddings its gradient explodes (CPU runs at the default head widths, batch 256: NaN at lr 0.15 with
scale 1 and at the peak lr 0.3 with scale 0.1; 0.04 trained stably through the peak; a full-length run has not
been made). LARS, the paper's optimiser, normalises each layer's step and is insensitive to the loss scale. Under
SGD the scale is a learning-rate factor; the three weights keep their ratios.

Deviations from the published recipe (LARS, base lr 0.2 x B/256, weight decay 1e-6 with none on BN and biases;
solo-learn CIFAR: LARS lr 0.3, wd 1e-4, its own augmentation with solarisation), shared by every rival here: the
trainer's SGD (lr 0.3 x B/256, momentum 0.9, weight decay 1e-4 on every parameter, warm-up + cosine) and the
project's strong augmentation for both views.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..losses import vicreg_terms
from ..models import mlp
from .base import DataContext, RunContext
from .two_view import TwoViewMethod


@dataclass
class VICRegParams:
    sim_weight: float = 25.0   # lambda, invariance (the paper's section 4.1 and solo-learn's cifar/vicreg.yaml)
    var_weight: float = 25.0   # mu, variance (the same sources)
    cov_weight: float = 1.0    # nu, covariance (the same sources)
    scale_loss: float = 0.04   # 1/25: the unscaled loss diverges under the shared SGD (docstring); 1 = the paper's


class VICReg(TwoViewMethod):
    name = "vicreg"
    Params = VICRegParams

    def __init__(self, ctx: RunContext, params: VICRegParams, data: DataContext):
        super().__init__(ctx, data)
        self.params = params
        self.projector = mlp([self.encoder.out_dim, ctx.proj_hidden, ctx.proj_hidden, ctx.proj_out], last_bn=False)

    def terms(self, views):
        z1, z2 = self.project(views.images["view1"]), self.project(views.images["view2"])
        t = vicreg_terms(z1, z2, *self.gather_views(z1, z2))
        p = self.params
        loss = p.sim_weight * t["inv"] + p.var_weight * t["var"] + p.cov_weight * t["cov"]
        return p.scale_loss * loss, t, z1, z2

    def ssl_terms(self, views):
        loss, _, z1, z2 = self.terms(views)
        return loss, z1, z2

    def loss_terms(self, views):
        loss, t, _, _ = self.terms(views)
        return {"loss": loss, "ssl": loss.detach(), **{k: v.detach() for k, v in t.items()}}, {}
