"""Sinkhorn-Knopp equipartition, ReSA/SwAV convention, with global sums under torch.distributed."""
from __future__ import annotations

import torch

from ..distributed import all_reduce_, world_size
from .common import full_precision


@torch.no_grad()
@full_precision
def sinkhorn(scores: torch.Tensor, eps: float = 0.05, iters: int = 3) -> torch.Tensor:
    """Soft assignment A for `scores` [n_online, n_momentum]; each row of A sums to 1.

    Rows are online samples (local to this rank), columns are momentum samples (gathered from all ranks, so the
    same on every rank). Sums over rows are therefore all-reduced; sums over columns stay local. This is ReSA's
    `Q = exp(S/eps)^T; Q /= sum; repeat {rows /= K; cols /= B}; Q *= B` written on A = Q^T.
    """
    a = scores.detach()
    # A global constant shift cancels in the first normalisation; it must be global so ranks stay consistent.
    # exp() returns a new tensor, so the in-place divisions below never touch the caller's scores.
    a = torch.exp((a - all_reduce_(a.max().clone(), "max")) / eps)
    n_cols = a.shape[1]
    n_rows = a.shape[0] * world_size()
    a /= all_reduce_(a.sum())
    for _ in range(iters):
        a /= all_reduce_(a.sum(dim=0, keepdim=True))  # each momentum sample gets mass 1/K
        a /= n_cols
        a /= a.sum(dim=1, keepdim=True)  # each online sample gets mass 1/B
        a /= n_rows
    return a * n_rows
