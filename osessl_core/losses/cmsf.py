"""MSF / CMSF (Navaneet et al., ECCV'22): neighbour selection and the mean-shift loss (docs/decisions.md#cmsf).

Distances are d(a, b) = 2 - 2 a^T b on L2-normalised embeddings. Neighbours are chosen on target embeddings
(a discrete choice, no gradient); only the query q carries gradient into the loss. Every function takes the
whole memory plus a validity mask, so shapes are static.
"""
from __future__ import annotations

import torch

from .common import full_precision

# Larger than any distance between unit vectors (<= 4): the code's value for "outside the constraint".
OUTSIDE = 5.0


@full_precision
def pairwise_distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """d(a_i, b_j) = 2 - 2 a_i^T b_j, shape [len(a), len(b)]."""
    return 2 - 2 * a @ b.T


@torch.no_grad()
@full_precision
def nearest(dist: torch.Tensor, k: int, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Indices [B, k] of the k smallest distances per row; slots with valid=False are never chosen while a row has
    k valid ones (the caller guarantees that: the batch itself is always in the memory)."""
    if valid is not None:
        dist = dist.masked_fill(~valid, float("inf"))
    return dist.topk(k, dim=1, largest=False).indices


@torch.no_grad()
@full_precision
def constrain_to_members(dist: torch.Tensor, members: torch.Tensor,
                         eligible: torch.Tensor | None = None) -> torch.Tensor:
    """CMSF_self: subtract 5 from d(u_i, m) for m in C_i (indices [B, k']), so the top-k picks the members of C_i
    first and only then, if |C_i| < k, anything else (the code's scatter of -5). Members with eligible=False ([M])
    are ignored: they only pad C_i when fewer than k' memory entries qualify."""
    hit = torch.zeros_like(dist).scatter_(1, members, 1.0)
    if eligible is not None:
        hit = hit * eligible
    return dist - OUTSIDE * hit


@torch.no_grad()
@full_precision
def constrain_to_labels(dist: torch.Tensor, query_labels: torch.Tensor, memory_labels: torch.Tensor) -> torch.Tensor:
    """CMSF_sup/semi: d(u_i, m) = 5 where label(m) != y_i, so same-label entries win (others leak in only if fewer
    than k exist). Rows with y_i < 0 (semi: not confident) keep the plain distances, i.e. MSF; memory labels < 0
    (not confident) match no query."""
    other = (memory_labels.unsqueeze(0) != query_labels.unsqueeze(1)) & (query_labels >= 0).unsqueeze(1)
    return dist.masked_fill(other, OUTSIDE)


@full_precision
def mean_shift_loss(q: torch.Tensor, memory: torch.Tensor, neighbours: torch.Tensor) -> torch.Tensor:
    """L = mean_i (1/k) sum_{m in NN_i} d(q_i, m), NN_i = memory[neighbours[i]] (the paper's "sum v^T z" has a
    sign typo; the code minimises the distance). Gathers the k rows instead of the code's full q M^T: same value."""
    targets = memory.detach()[neighbours]  # [B, k, d]
    return (2 - 2 * torch.einsum("bd,bkd->bk", q, targets)).mean()


@torch.no_grad()
@full_precision
def pseudo_labels(logits: torch.Tensor, known: torch.Tensor, threshold: float) -> torch.Tensor:
    """CMSF_semi labels of a batch: the ground truth where known (>= 0), else argmax softmax(logits) if its
    probability reaches `threshold`, else -1 (not confident)."""
    conf, pred = torch.softmax(logits, dim=1).max(dim=1)
    return torch.where(known >= 0, known, torch.where(conf >= threshold, pred, torch.full_like(pred, -1)))
