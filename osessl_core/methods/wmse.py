"""W-MSE 2 (Ermolov et al., ICML'21): the MSE of normalised embeddings after Cholesky whitening in sub-batches.

Both views go through e and the head g = Linear-BN-ReLU-Linear (the paper's 2-layer head with BN); the embeddings
of the whole global batch (gathered with gradient, so the whitening statistics are global and N ranks compute
what one process does) are split into sub-batches of w_size images by a random permutation drawn from the run's
shared generator in `make_views`; each view is whitened within each sub-batch by its own mean and covariance
(Cholesky: W = L^-1, L L^T = Sigma), and the loss is 2 - 2 cos between the two whitened views, averaged over the
batch (and over w_iter permutations). Every rank computes the loss of the whole global batch; DDP's average of
their gradients, through the autograd-aware gather, is the one-process gradient.

CIFAR recipe: the official code (htdt/self-supervised README, W-MSE 2 on CIFAR-10/100: --emb 64 --w_size 128,
default --w_iter 1 --w_eps 0, batch 512) and solo-learn's scripts/pretrain/cifar/wmse.yaml (proj_output_dim 64,
whitening_size 128, batch 256): embedding d = 64, sub-batch w = 128, one iteration, no shrinkage. Both views get
the gradient (the official norm_mse_loss; solo-learn's default "simplified" loss detaches the second view).
- Small batches (CPU smoke runs, the CPU benchmark: global batch 32 or 64) cannot hold the paper's w = 128 or a
  64-d covariance of full rank: the sub-batch is then min(w_size, global batch), and the embedding is cut to at
  most w/2 (lightly's stability condition w >= 2d, which the paper's 128 / 64 meets exactly), with a warning.
  At the paper's sizes (global batch >= 128) nothing changes.
- The global batch must be a multiple of the sub-batch (as in the official code).

Deviations, shared by every rival here: the trainer's SGD (lr 0.3 x B/256, momentum 0.9, wd 1e-4, warm-up +
cosine) instead of Adam (lr 3e-3 official / 2e-3 solo-learn, wd 1e-6), and the project's strong augmentation for
both views instead of W-MSE's (crop scale 0.2-1, jitter 0.4/0.4/0.4/0.1, grayscale 0.1). The head's hidden width is
the shared ctx.proj_hidden (the paper: 1024); its output is `embedding_dim`, not ctx.proj_out, because the
whitened dimension must stay below the sub-batch size (the shared 512 > 128). Each view is its own forward, so BN
sees one view's batch (the official code concatenates the views). The evaluated network is the encoder e.
"""
from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass

import torch

from ..distributed import world_size
from ..losses import wmse_loss
from ..losses.common import upcast
from .base import Batch, DataContext, RunContext, StepRandom, Views
from .two_view import TwoViewMethod


@dataclass
class WMSEParams:
    embedding_dim: int = 64   # whitened dimension d: official README (--emb 64) and solo-learn cifar/wmse.yaml
    w_size: int = 128         # sub-batch size: official README (--w_size 128) and solo-learn cifar/wmse.yaml
    w_iter: int = 1           # whitening permutations per step: official default (--w_iter 1), solo-learn
    eps: float = 0.0          # covariance shrinkage: official default (--w_eps 0), solo-learn


def effective_sizes(params: WMSEParams, global_batch: int) -> tuple[int, int]:
    """(sub-batch w, embedding d) for a global batch: min(w_size, batch) and min(embedding_dim, w // 2)."""
    w = min(params.w_size, global_batch)
    return w, min(params.embedding_dim, w // 2)


class WMSE(TwoViewMethod):
    name = "wmse"
    Params = WMSEParams

    def __init__(self, ctx: RunContext, params: WMSEParams, data: DataContext):
        p = params
        if p.embedding_dim < 1 or p.w_size < 2 or p.w_iter < 1 or not 0 <= p.eps < 1:
            raise ValueError("W-MSE needs embedding_dim >= 1, w_size >= 2, w_iter >= 1 and 0 <= eps < 1")
        batch = ctx.global_batch
        w, d = effective_sizes(p, batch)
        if batch % w:
            raise ValueError(f"the global batch ({batch}) must be a multiple of w_size={w}")
        if (w, d) != (p.w_size, p.embedding_dim):
            warnings.warn(f"W-MSE: global batch {batch}: whitening in sub-batches of {w} (w_size={p.w_size}) with "
                          f"embedding_dim {d} (asked {p.embedding_dim}; at most half the sub-batch)")
        super().__init__(dataclasses.replace(ctx, proj_out=d), data)  # the head ends in the whitened dimension
        self.params, self.global_batch, self.w_size, self.embedding_dim = p, batch, w, d

    def make_views(self, batch: Batch, rng: StepRandom) -> Views:
        views = super().make_views(batch, rng)
        # The sub-batch split of the global batch, from the shared generator: the same on every rank.
        views.draws["perms"] = torch.stack([torch.randperm(self.global_batch, generator=rng.device, device=batch.device)
                                            for _ in range(self.params.w_iter)])
        return views

    def loss_terms(self, views):
        z1, z2 = upcast(self.project(views.images["view1"])), upcast(self.project(views.images["view2"]))
        loss = wmse_loss(*self.gather_views(z1, z2), views.draws["perms"], self.w_size,
                         self.params.eps)
        return {"loss": loss, "wmse": loss.detach()}, {}
