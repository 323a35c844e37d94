"""W-MSE (Ermolov et al., ICML'21, eq. 5-7 and Algorithm 1): Cholesky whitening within sub-batches, then the MSE of
the normalised whitened views (W-MSE 2: two positives)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .common import full_precision


@full_precision
def whiten(x: torch.Tensor, eps: float = 0.0) -> torch.Tensor:
    """Each group of `x` (G x w x d) whitened by its own statistics: W (x - mean), W = L^-1 with
    L L^T = (1 - eps) Sigma + eps I and Sigma the unbiased (w - 1) covariance of the group (W-MSE eq. 6-7).

    `cholesky_ex` does not check for failure, which would be a host sync: a singular covariance gives non-finite
    values, which the trainer reports."""
    xc = x - x.mean(dim=1, keepdim=True)
    cov = xc.transpose(1, 2) @ xc / (x.shape[1] - 1)
    if eps:
        cov = (1 - eps) * cov + eps * torch.eye(x.shape[2], dtype=x.dtype, device=x.device)
    chol, _ = torch.linalg.cholesky_ex(cov)
    # (L^-1 xc^T)^T, by a triangular solve instead of forming L^-1
    return torch.linalg.solve_triangular(chol, xc.transpose(1, 2), upper=False).transpose(1, 2)


@full_precision
def wmse_loss(z1: torch.Tensor, z2: torch.Tensor, perms: torch.Tensor, w_size: int, eps: float = 0.0) -> torch.Tensor:
    """mean over the w_iter rows of `perms` of 2 - 2 mean_i cos(W z1_i, W z2_i).

    z1, z2: both views' embeddings of the whole (global) batch, B x d, row i the same image. Each row of `perms`
    (w_iter x B) splits the batch into sub-batches perm.view(-1, w_size); each view is whitened within each
    sub-batch by its own statistics (the official code's W-MSE 2). The mean over pairs is taken in permuted order,
    which does not change it."""
    d = z1.shape[1]
    total = z1.new_zeros(())
    for it in range(perms.shape[0]):
        perm = perms[it]
        a = whiten(z1[perm].view(-1, w_size, d), eps).reshape(-1, d)
        b = whiten(z2[perm].view(-1, w_size, d), eps).reshape(-1, d)
        total = total + 2 - 2 * (F.normalize(a, dim=1) * F.normalize(b, dim=1)).sum(dim=1).mean()
    return total / perms.shape[0]
