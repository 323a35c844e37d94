"""DSA, the Dynamic Semantic Adjuster (Song, Qiang et al.), on top of SimCLR or BYOL.

L = L_ssl + nu L_AM^s + upsilon L_con over the 2N views of the global batch, with z = normalize(g(e(x))) (for BYOL
the projection before the predictor), the regulator M = f_s(z) row-normalised, the prior M^pro from a frozen f_aux
on the same augmented views, and the connection score sc from the eta-NN graph of those f_aux features.

Resolutions (docs/decisions.md#dsa): f_s on the concatenation [z_i; z_j] with a softplus output; one 2N x 2N
matrix (not the code's four blocks); M^pro = softmax(-||zbar_i - zbar_j||^2 / tau), row-normalised; squared
distances on unit z; sc outside the exponent, bounded (code) definition, on the augmented views; the paper's sums
and weights (nu = 0.1 for L_AM^s, upsilon = 100 for L_con); tau = 0.7. L_AM^s masks j = i and is computed as a
log-sum-exp. Further:
* f_s's hidden width is `fs_hidden` (64) instead of d = ctx.proj_out: the hidden layer is a 2N x 2N x h tensor
  (64 MiB at 2N = 512 and h = 64, 512 MiB per copy at h = d = 512), and 64 is the code's width (its embedding is
  64-d) (docs/decisions.md#d-dsa-1).
* f_aux is offline (docs/decisions.md#d-dsa-9): dense HOG + colour histogram by default, see
  models/aux_features.py.
* f_s's gradient is multiplied by `fs_grad_scale` = 1/upsilon (docs/decisions.md#d-dsa-8). Optimiser: the
  trainer's SGD, as for the base methods; the code uses Adam (3e-3), whose step size does not grow with a loss
  weight. Under SGD, f_s (trained by upsilon L_con alone, in effect) took 100x larger steps and diverged within a
  few steps in the tiny CPU test (BYOL base, lr 0.25: f_s weights 0.4 -> 16 in two steps, then NaN). Scaling f_s's
  gradient only keeps the paper's weighting of the encoder's gradient and gives f_s steps of lr x grad L_con. At
  full scale (2N = 512, lr 0.3) L_con then falls from 0.145 to 0.018 in 1000 steps.
  SGD's weight decay on f_s is not scaled with it, so relative to its (scaled) gradient it weighs upsilon times
  more, pulling f_s towards a constant output (a uniform M).
* With row-normalised M and M^pro (docs/decisions.md#d-dsa-2), a row of M averages 1/2N, and no entry of M^pro
  exceeds 1 / (1 + (2N - 1) exp(-4 / tau)) = 0.37 (2N = 512, tau = 0.7). M starts near uniform and is trained
  towards M^pro, so at alpha = 1, 2 M_ij - alpha stays negative for practically every pair: L_AM^s repels, each
  pair weighted by the connection score and by how far M_ij lies below alpha / 2. The code's M (near 1/N) has the
  same property; the normalisation is kept, and a smaller `alpha` reopens the attracting side.
Magnitudes at step 0 (docs/decisions.md#d-dsa-7; CIFAR-10, batch 256, ResNet-18, HOG prior): L_ssl 6.17,
L_AM^s 10.4, L_con 0.145, so upsilon L_con = 14.5 is 2.3x L_ssl (BYOL: 3.5x), under the 10x limit above which the
code's weights would be used: the paper's weights are kept.
Encoder gradient norms: 2.26 (L_ssl), 1.86 (upsilon L_con), 0.22 (nu L_AM^s). These were measured with the
earlier Sobel-gradient HOG; its present [-1, 0, 1] gradient lowers L_con at step 0 by 2 % (models/aux_features.py).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..distributed import gather_nograd, gather_with_grad
from ..losses import arranging_loss, arranging_row_lse, connection_score, constraint_loss, prior_matrix, regulator
from ..models.aux_features import build_aux_encoder
from .base import Batch, DataContext, Method, RunContext, StepRandom, Views
from .byol import BYOL, BYOLParams
from .simclr import SimCLR, SimCLRParams


@dataclass
class DSAParams:
    base: str = "simclr"          # the SSL method DSA regularises: simclr | byol
    temperature: float = 0.5      # SimCLR's NT-Xent temperature (unused with BYOL)
    nu: float = 0.1               # weight of L_AM^s (paper section 6.6)
    upsilon: float = 100.0        # weight of L_con
    alpha: float = 1.0            # 2 M_ij - alpha > 0 attracts, < 0 repels (nearly always, see the docstring)
    tau: float = 0.7              # temperature of L_AM^s and of M^pro
    eta: int = 20                 # neighbours in the connection score; needs eta < 2N
    mu: int = 1                   # a neighbour counts if more than mu of its neighbours' neighbour lists hold i
    fs_hidden: int = 64           # hidden width of f_s (see the module docstring)
    fs_grad_scale: float | None = None  # multiplier of f_s's gradient; None = 1/upsilon (see the module docstring)
    prior: str = "hog"            # f_aux: hog | random_resnet | checkpoint
    prior_checkpoint: str = ""    # run directory (or its checkpoint.pt) whose eval encoder is f_aux


def scale_grad(x: torch.Tensor, scale: float) -> torch.Tensor:
    """x in the forward pass, scale * grad in the backward pass."""
    return x.detach() + scale * (x - x.detach())


class DSA(Method):
    name = "dsa"
    Params = DSAParams

    def __init__(self, ctx: RunContext, params: DSAParams, data: DataContext):
        super().__init__()
        two_n = 2 * ctx.global_batch
        if params.base not in ("simclr", "byol"):
            raise ValueError(f"base must be 'simclr' or 'byol', got {params.base!r}")
        if not 0 < params.eta < two_n:
            raise ValueError(f"eta={params.eta} needs 0 < eta < 2N = {two_n} (two views of the global batch)")
        if not 0 <= params.mu < params.eta:
            raise ValueError(f"mu={params.mu} needs 0 <= mu < eta={params.eta}, else every score is 0")
        if params.tau <= 0 or params.fs_hidden < 1 or params.upsilon <= 0 and params.fs_grad_scale is None:
            raise ValueError(f"need tau > 0, fs_hidden >= 1 and upsilon > 0 (or an explicit fs_grad_scale), got "
                             f"tau={params.tau}, fs_hidden={params.fs_hidden}, upsilon={params.upsilon}")
        self.params = params
        if params.base == "simclr":
            self.base = SimCLR(ctx, SimCLRParams(temperature=params.temperature), data)
        else:
            self.base = BYOL(ctx, BYOLParams(), data)
        self.fs_in = nn.Linear(2 * ctx.proj_out, params.fs_hidden)   # f_s = Linear(2d, h) - ReLU - Linear(h, 1)
        self.fs_out = nn.Linear(params.fs_hidden, 1)
        self.ctx = ctx
        self.prior = build_aux_encoder(params.prior, ctx, data, params.prior_checkpoint)  # f_aux
        self.fs_grad_scale = 1.0 / params.upsilon if params.fs_grad_scale is None else params.fs_grad_scale

    def view_pipelines(self):
        return self.base.view_pipelines()

    def make_views(self, batch: Batch, rng: StepRandom) -> Views:
        views = self.base.make_views(batch, rng)
        views.features.update(prior1=self.prior(views.images["view1"]), prior2=self.prior(views.images["view2"]))
        return views

    def momentum_pairs(self):
        return self.base.momentum_pairs()

    def loss_terms(self, views):
        p = self.params
        l_ssl, z1, z2 = self.base.ssl_terms(views)
        n, w = z1.shape[0], self.ctx.world_size
        z1, z2 = F.normalize(z1, dim=1), F.normalize(z2, dim=1)  # unit z (docs/decisions.md#d-dsa-4)
        # This rank's 2n rows against the 2N columns of the global batch, both views stacked (view-major).
        z_rows = torch.cat([z1, z2])
        z_cols = torch.cat([gather_with_grad(z1, [n] * w), gather_with_grad(z2, [n] * w)])
        prior = torch.cat([gather_nograd(views.features["prior1"]), gather_nograd(views.features["prior2"])])
        idx = torch.arange(n, device=z1.device) + self.ctx.offset
        rows = torch.cat([idx, idx + n * w])  # global index of each row
        fs = [scale_grad(t, self.fs_grad_scale) for t in (self.fs_in.weight, self.fs_in.bias, self.fs_out.weight,
                                                            self.fs_out.bias)]
        m = regulator(z_rows, z_cols, *fs)
        # DDP averages the ranks' gradients (and the trainer their logged terms): a sum over rows is scaled by
        # the world size, so that the average is the sum over all 2N rows.
        l_con = w * constraint_loss(prior_matrix(prior[rows], prior, p.tau), m)
        sc = connection_score(prior, p.eta, p.mu)
        row_lse = arranging_row_lse(z_rows, z_cols, m, sc[rows], rows, p.alpha, p.tau)
        l_am = arranging_loss(gather_with_grad(row_lse, [2 * n] * w))  # the whole batch's value on every rank
        total = l_ssl + p.nu * l_am + p.upsilon * l_con
        return {"loss": total, "ssl": l_ssl.detach(), "am": l_am.detach(), "con": l_con.detach(),
                "sc_mean": sc.mean()}, {}

    def eval_encoder(self) -> nn.Module:
        return self.base.eval_encoder()

    def eval_projector(self) -> nn.Sequential:
        return self.base.eval_projector()
