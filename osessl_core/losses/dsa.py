"""DSA (Song, Qiang et al.): regulator M, prior M^pro, L_con, connection score sc and L_AM^s (docs/decisions.md#dsa).

Row/column form: every function takes the rows it computes (this rank's anchors) and the columns they are compared
with (the global batch), so a data-parallel run shards the 2N x 2N matrices by rows. In one process rows = columns.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .common import full_precision


def _sq_dist(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """||a_i - b_j||^2 by expansion: finite gradients even at zero distance (cdist's are not)."""
    return ((a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * a @ b.T).clamp_min(0)


def _is_own(own_cols: torch.Tensor, n_cols: int) -> torch.Tensor:
    """(rows x cols) mask of each row's own column."""
    return torch.arange(n_cols, device=own_cols.device)[None, :] == own_cols[:, None]


@full_precision
def regulator(z_rows: torch.Tensor, z_cols: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor,
              b2: torch.Tensor) -> torch.Tensor:
    """M_ij = f_s([z_i; z_j]) / sum_k f_s([z_i; z_k]), f_s(u) = softplus(w2 ReLU(W1 u + b1) + b2) (eq. 12).

    W1 [z_i; z_j] = W_a z_i + W_b z_j, so the hidden layer is a broadcast sum (rows x cols x h) and no
    rows x cols x 2d pair tensor is built. The softplus output keeps f_s > 0 for the row normalisation without the
    code's dead-ReLU collapse (docs/decisions.md#d-dsa-1). Rows are normalised over all columns, the anchor's own
    included (docs/decisions.md#d-dsa-2).
    w1: (h, 2d), b1: (h,), w2: (1, h), b2: (1,), i.e. the weights of Linear(2d, h) and Linear(h, 1).
    """
    d = z_rows.shape[1]
    hidden = torch.relu(F.linear(z_rows, w1[:, :d], b1)[:, None, :] + F.linear(z_cols, w1[:, d:])[None, :, :])
    x = hidden @ w2[0] + b2[0]                                             # (rows, cols)
    # o / sum(o) = softmax(log o): no 0/0 when a whole row of softplus underflows. Below -20, log softplus(x) = x
    # to 1e-9 (the clamp keeps the unused branch's gradient finite).
    log_out = torch.where(x < -20, x, torch.log(F.softplus(x.clamp_min(-20))))
    return torch.softmax(log_out, dim=1)


@full_precision
def prior_matrix(aux_rows: torch.Tensor, aux_cols: torch.Tensor, tau: float = 0.7) -> torch.Tensor:
    """M^pro_ij = softmax_j(-||a_i - a_j||^2 / tau) on L2-normalised aux features a (eqs. 14-15; the paper's
    exp(+dist) is a sign typo, docs/decisions.md#d-dsa-3). Carries no gradient."""
    a_rows, a_cols = F.normalize(aux_rows.detach(), dim=1), F.normalize(aux_cols.detach(), dim=1)
    return torch.softmax(-_sq_dist(a_rows, a_cols) / tau, dim=1)


@full_precision
def constraint_loss(m_pro: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """L_con = ||M^pro - M||_2^2, summed over all entries (eq. 16)."""
    return ((m_pro - m) ** 2).sum()


@torch.no_grad()
@full_precision
def connection_score(aux: torch.Tensor, eta: int = 20, mu: int = 1) -> torch.Tensor:
    """sc_i = (1/eta) #{a in N(i) : #{b in N(a) : i in N(b)} > mu}, the DSA code's bounded score
    (docs/decisions.md#d-dsa-5).

    N(i): the eta nearest neighbours of i by cosine of the aux features, i itself excluded. Vectorised as
    A_pq = 1[q in N(p)], R = A A (R_ai counts the b in N(a) with i in N(b)), sc_i = (1/eta) sum_a A_ia 1[R_ai > mu].
    """
    a = F.normalize(aux, dim=1)
    n = a.shape[0]
    sim = (a @ a.T).masked_fill(torch.eye(n, dtype=torch.bool, device=a.device), float("-inf"))
    adjacency = torch.zeros_like(sim).scatter_(1, sim.topk(eta, dim=1).indices, 1.0)
    reach = adjacency @ adjacency
    return (adjacency * (reach.T > mu)).sum(1) / eta


@full_precision
def arranging_row_lse(z_rows: torch.Tensor, z_cols: torch.Tensor, m: torch.Tensor, sc_rows: torch.Tensor,
                      own_cols: torch.Tensor, alpha: float = 1.0, tau: float = 0.7) -> torch.Tensor:
    """Per anchor i: logsumexp_{j != i}(e_ij + log sc_i), e_ij = (2 M_ij - alpha) ||z_i - z_j||^2 / tau.

    own_cols: each row's own column (masked, docs/decisions.md#d-dsa-6). sc_i = 0 is clamped to the smallest
    normal float, so an all-zero score still gives a finite loss and gradient; on unit z with tau = 0.7 such terms
    stay e^60 times below those of any anchor with sc >= 1/eta (fp32), i.e. they vanish as in the exact formula.
    """
    e = (2 * m - alpha) * _sq_dist(z_rows, z_cols) / tau
    e = e + torch.log(sc_rows.clamp_min(torch.finfo(e.dtype).tiny))[:, None]
    return torch.logsumexp(e.masked_fill(_is_own(own_cols, e.shape[1]), float("-inf")), dim=1)


@full_precision
def arranging_loss(row_lse: torch.Tensor) -> torch.Tensor:
    """L_AM^s = log(1 + sum_i sc_i sum_{j != i} exp(e_ij)) = softplus(logsumexp_i row_lse_i) (eq. 19,
    docs/decisions.md#d-dsa-6).

    Exact and overflow-free; pass the row terms of the whole (gathered) batch."""
    return F.softplus(torch.logsumexp(row_lse, dim=0))
