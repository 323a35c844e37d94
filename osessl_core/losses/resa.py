"""ReSA's L_cluster (OSESSL eq. 1; docs/decisions.md#d-resa-1)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .common import full_precision, soft_cross_entropy
from .sinkhorn import sinkhorn


@full_precision
def resa_loss(h_online: torch.Tensor, h_momentum: torch.Tensor,
              z_online_weak: torch.Tensor, z_online_strong: torch.Tensor,
              z_momentum_weak: torch.Tensor, z_momentum_strong: torch.Tensor,
              temperature: float = 0.4, eps: float = 0.05, iters: int = 3) -> torch.Tensor:
    """L_cluster = 1/2 [CE(A, z_w z'_s^T / T) + CE(A, z_s z'_w^T / T)], A = sinkhorn(h h'^T).

    h_* are encoder outputs of the weak view; the assignment A carries no gradient and is shared by both directions.
    Momentum tensors may hold more rows than the online ones (all ranks gathered). Inputs need not be normalised.
    """
    h_on = F.normalize(h_online.detach(), dim=1)
    h_m = F.normalize(h_momentum.detach(), dim=1)
    assignment = sinkhorn(h_on @ h_m.T, eps=eps, iters=iters)
    z_w, z_s = F.normalize(z_online_weak, dim=1), F.normalize(z_online_strong, dim=1)
    zm_w = F.normalize(z_momentum_weak.detach(), dim=1)
    zm_s = F.normalize(z_momentum_strong.detach(), dim=1)
    return 0.5 * (soft_cross_entropy(assignment, z_w @ zm_s.T / temperature)
                  + soft_cross_entropy(assignment, z_s @ zm_w.T / temperature))
