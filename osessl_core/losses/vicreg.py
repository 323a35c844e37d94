"""VICReg's variance-invariance-covariance loss (Bardes, Ponce & LeCun, ICLR'22, eqs. 1-6)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .common import full_precision


def variance_term(z: torch.Tensor, gamma: float = 1.0, eps: float = 1e-4) -> torch.Tensor:
    """v(Z) = 1/d sum_j max(0, gamma - sqrt(Var(z^j) + eps)), unbiased variance over the batch (eqs. 1-2)."""
    return F.relu(gamma - torch.sqrt(z.var(0) + eps)).mean()


def covariance_term(z: torch.Tensor) -> torch.Tensor:
    """c(Z) = 1/d sum_{i != j} C(Z)_ij^2, C(Z) = (Z - mean)^T (Z - mean) / (n - 1) (eqs. 3-4)."""
    n, d = z.shape
    zc = z - z.mean(0)
    cov = zc.T @ zc / (n - 1)
    return (cov.pow(2).sum() - torch.diagonal(cov).pow(2).sum()) / d


@full_precision
def vicreg_terms(z1: torch.Tensor, z2: torch.Tensor, z1_all: torch.Tensor | None = None,
                 z2_all: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """The unweighted terms: invariance s = mean_{i,k} (z1_ik - z2_ik)^2 (MSE over this rank's n x d rows, as the
    official code's F.mse_loss: the paper's eq. 5 prints the sum over k, without the 1/d its weights were tuned
    with), variance v(Z1) + v(Z2) and covariance c(Z1) + c(Z2), both on the global batch z*_all (gathered with
    gradient under DDP; None in one process). Summed over the branches as in eq. 6 (the official code halves
    the variance sum)."""
    z1_all = z1 if z1_all is None else z1_all
    z2_all = z2 if z2_all is None else z2_all
    return {"inv": F.mse_loss(z1, z2), "var": variance_term(z1_all) + variance_term(z2_all),
            "cov": covariance_term(z1_all) + covariance_term(z2_all)}


def vicreg_loss(z1: torch.Tensor, z2: torch.Tensor, z1_all: torch.Tensor | None = None,
                z2_all: torch.Tensor | None = None, sim_weight: float = 25.0, var_weight: float = 25.0,
                cov_weight: float = 1.0) -> torch.Tensor:
    """lambda s(Z, Z') + mu [v(Z) + v(Z')] + nu [c(Z) + c(Z')] (eq. 6), lambda = mu = 25, nu = 1 by default."""
    t = vicreg_terms(z1, z2, z1_all, z2_all)
    return sim_weight * t["inv"] + var_weight * t["var"] + cov_weight * t["cov"]
