"""MoCo v3's symmetrised InfoNCE over the global batch of momentum keys (Chen, Xie & He, ICCV'21, Algorithm 1)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .common import full_precision


def _ctr(q: torch.Tensor, k_all: torch.Tensor, offset: int, temperature: float) -> torch.Tensor:
    """2 tau * mean_i CE(q_i . k_all^T / tau, label i + offset), q and k L2-normalised, k without gradient."""
    q = F.normalize(q, dim=1)
    k = F.normalize(k_all.detach(), dim=1)
    logits = q @ k.T / temperature                                       # (n, N)
    labels = torch.arange(q.shape[0], device=q.device) + offset
    # Cross-entropy written out, as in nt_xent (inductor's fused nll_loss kernel failed to build in Triton 3.6).
    ce = torch.logsumexp(logits, dim=1) - logits.gather(1, labels[:, None]).squeeze(1)
    return 2 * temperature * ce.mean()


@full_precision
def mocov3_loss(q1: torch.Tensor, q2: torch.Tensor, k1_all: torch.Tensor, k2_all: torch.Tensor, offset: int = 0,
                temperature: float = 0.2) -> torch.Tensor:
    """ctr(q1, k2) + ctr(q2, k1).

    q1, q2: this rank's online predictions (n x d) of views 1 and 2; k1_all, k2_all: the momentum keys of the
    global batch (N x d, rank order, this rank's rows at `offset`), gathered without gradient (in one process:
    this batch's keys, offset 0). Each query's positive is its own image's key of the other view; the N - 1 other
    keys are its negatives. The 2 tau factor is the paper's (it makes the gradient scale independent of tau).
    """
    return _ctr(q1, k2_all, offset, temperature) + _ctr(q2, k1_all, offset, temperature)
