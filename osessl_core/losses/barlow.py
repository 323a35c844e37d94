"""Barlow Twins' redundancy-reduction loss (Zbontar et al., ICML'21, eq. 1 and Algorithm 1), over the global batch."""
from __future__ import annotations

import torch

from .common import full_precision


def standardize(z: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Per dimension, zero mean and unit variance across the batch: (z - mean) / sqrt(var + eps), with the biased
    variance and eps of the official code's BatchNorm1d(affine=False) (Algorithm 1 prints torch's unbiased .std)."""
    return (z - z.mean(0)) / torch.sqrt(z.var(0, unbiased=False) + eps)


@full_precision
def barlow_twins_loss(z1: torch.Tensor, z2: torch.Tensor, lambd: float = 5e-3, eps: float = 1e-5) -> torch.Tensor:
    """sum_i (1 - C_ii)^2 + lambda sum_{i != j} C_ij^2, with C = standardize(z1)^T standardize(z2) / N (d x d).

    z1, z2: the projector outputs of the two views for the whole (global) batch: under DDP pass the embeddings
    gathered with gradient, so that the statistics and C are those of the global batch on every rank (the official
    code gets the same with SyncBatchNorm and an all-reduce of C). Unscaled, as in the paper.
    """
    n = z1.shape[0]
    c = standardize(z1, eps).T @ standardize(z2, eps) / n
    diag = torch.diagonal(c)
    on = (1 - diag).pow(2).sum()
    off = c.pow(2).sum() - diag.pow(2).sum()
    return on + lambd * off
