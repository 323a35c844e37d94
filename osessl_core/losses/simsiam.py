"""SimSiam's symmetric negative cosine with stop-gradient (Chen & He, CVPR'21, eqs. 1-2)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .common import full_precision


@full_precision
def simsiam_loss(p1: torch.Tensor, p2: torch.Tensor, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
    """L = 1/2 D(p1, stopgrad(z2)) + 1/2 D(p2, stopgrad(z1)), with D(p, z) = -mean_i cos(p_i, z_i).

    p: predictor outputs h(z) of views 1 and 2; z: projector outputs of views 1 and 2 (no gradient flows into them
    through this term). Per-sample, so under DDP each rank's mean over its equal shard averages to the global loss.
    """
    def d(p, z):
        return -(F.normalize(p, dim=1) * F.normalize(z.detach(), dim=1)).sum(1).mean()
    return 0.5 * d(p1, z2) + 0.5 * d(p2, z1)
