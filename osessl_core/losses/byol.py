"""BYOL's normalised MSE (Grill et al., NeurIPS'20, eq. 2), symmetrised."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .common import full_precision


@full_precision
def byol_loss(p1: torch.Tensor, p2: torch.Tensor, t1: torch.Tensor, t2: torch.Tensor) -> torch.Tensor:
    """L + L~ = mean_i (2 - 2 cos(p1_i, t2_i)) + mean_i (2 - 2 cos(p2_i, t1_i)).

    p: online predictions of views 1 and 2; t: target projections of views 1 and 2 (no gradient flows into them).
    """
    def half(p, t):
        return (2 - 2 * (F.normalize(p, dim=1) * F.normalize(t.detach(), dim=1)).sum(1)).mean()
    return half(p1, t2) + half(p2, t1)
