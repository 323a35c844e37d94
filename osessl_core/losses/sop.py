"""SOP's non-parametric losses (Silva et al., ICML'25), eqs. 2 and 4, resolved as in docs/decisions.md#sop.

A task draws anchors from a memory of teacher embeddings, gives each anchor its k nearest neighbours (support
embeddings, SEs) from the rest of the memory, and scores a view against the K resulting SOPs:
P(u) = softmax(u D^T / tau) Y. Memories, D and Y are constants; gradients flow through the student embedding only.
All functions run outside autocast, in fp32 (or the inputs' fp64).
"""
from __future__ import annotations

import torch

from .common import full_precision


@torch.no_grad()
@full_precision
def build_sops(memory: torch.Tensor, perm: torch.Tensor, num_anchors: int, k: int, smoothing: float = 0.1):
    """One task's SOPs (docs/decisions.md#d-sop-1, #d-sop-2).

    memory: N x d unit rows; perm: a permutation of 0..N-1 whose first `num_anchors` (K) entries are the anchors
    and the rest the search pool (so an anchor is never an SE, of itself or of another anchor). Each SOP has k+1
    members: the anchor's k nearest pool rows (cosine), then the anchor itself, whose score is 1 - smoothing.
    Member r of anchor a(r) with score s_r gets Y[r, a(r)] = s_r and Y[r, c] = (1 - s_r) / (K - 1) elsewhere
    (rows renormalised, as the code does against rounding). Returns D (K(k+1) x d, anchor-major), Y (K(k+1) x K)
    and members (K x (k+1) memory indices).
    """
    memory = memory.detach()
    anchors, pool = perm[:num_anchors], perm[num_anchors:]
    if k > 0:
        scores, nearest = (memory[anchors] @ memory[pool].T).topk(k, dim=1)
        members = torch.cat([pool[nearest], anchors.unsqueeze(1)], dim=1)
        scores = torch.cat([scores, scores.new_full((num_anchors, 1), 1.0 - smoothing)], dim=1)
    else:  # SOP-MIM: each SOP is its anchor alone, so Y is plain label smoothing
        members = anchors.unsqueeze(1)
        scores = memory.new_full((num_anchors, 1), 1.0 - smoothing)
    s = scores.reshape(-1, 1)
    owner = torch.arange(num_anchors, device=memory.device).repeat_interleave(k + 1)
    is_owner = owner.unsqueeze(1) == torch.arange(num_anchors, device=memory.device)
    y = torch.where(is_owner, s, (1.0 - s) / (num_anchors - 1))
    y = y / y.sum(dim=1, keepdim=True)
    return memory[members.reshape(-1)], y, members


@full_precision
def sop_probabilities(u: torch.Tensor, d: torch.Tensor, y: torch.Tensor, tau: float) -> torch.Tensor:
    """P(u) = softmax(u D^T / tau) Y over the last dimension: (..., d) -> (..., K)."""
    return torch.softmax(u @ d.T / tau, dim=-1) @ y


def _cross_entropy(target: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """-sum_c target_c log p_c over the last dim. P is a mixture, not a softmax: the code's log(p^-q), with the
    log clamped (p > 0 whenever the Y rows have positive off-anchor mass)."""
    return -(target * p.clamp_min(1e-12).log()).sum(dim=-1)


@full_precision
def sop_cls_loss(p_student: torch.Tensor, p_teacher: torch.Tensor) -> torch.Tensor:
    """Eq. 2 over views: mean over pairs (v, t), v != t, of mean_b CE(P_t(z_t), P_s(z_v)).

    p_student: V x B x K (its first two views are the global views the teacher saw); p_teacher: 2 x B x K."""
    pairs = [_cross_entropy(p_teacher[t].detach(), p_student[v]).mean()
             for t in range(p_teacher.shape[0]) for v in range(p_student.shape[0]) if v != t]
    return torch.stack(pairs).mean()


@full_precision
def sop_patch_loss(p_student: torch.Tensor, p_teacher: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Eq. 4: for each global view g, mean over images of sum_l m_l CE(P_t(z_l), P_s(z^_l)) / max(1, sum_l m_l),
    then the mean over views. p_*: G x B x L x K (student on the masked view, teacher on the same view unmasked);
    mask: G x B x L, True at masked patches (the [CLS] token is not included)."""
    m = mask.to(p_student.dtype)
    ce = _cross_entropy(p_teacher.detach(), p_student)
    return ((ce * m).sum(-1) / m.sum(-1).clamp_min(1.0)).mean()


@full_precision
def sop_cls_term(z_student: torch.Tensor, z_teacher: torch.Tensor, memory: torch.Tensor, perms: torch.Tensor,
                 num_anchors: int, k: int = 8, smoothing: float = 0.1, tau_s: float = 0.1,
                 tau_t: float = 0.04) -> torch.Tensor:
    """L_CLS averaged over tasks, one per row of `perms` (T x N). z_student: V x B x d, z_teacher: 2 x B x d."""
    losses = []
    for perm in perms.unbind(0):
        d, y, _ = build_sops(memory, perm, num_anchors, k, smoothing)
        losses.append(sop_cls_loss(sop_probabilities(z_student, d, y, tau_s),
                                   sop_probabilities(z_teacher.detach(), d, y, tau_t)))
    return torch.stack(losses).mean()


@full_precision
def sop_patch_term(z_student: torch.Tensor, z_teacher: torch.Tensor, mask: torch.Tensor, memory: torch.Tensor,
                   perms: torch.Tensor, num_anchors: int, smoothing: float = 0.1, tau_s: float = 0.1,
                   tau_t: float = 0.04) -> torch.Tensor:
    """L_patch averaged over tasks (rows of `perms`); SOPs are single anchors (k = 0). z_*: G x B x L x d."""
    losses = []
    for perm in perms.unbind(0):
        d, y, _ = build_sops(memory, perm, num_anchors, 0, smoothing)
        losses.append(sop_patch_loss(sop_probabilities(z_student, d, y, tau_s),
                                     sop_probabilities(z_teacher.detach(), d, y, tau_t), mask))
    return torch.stack(losses).mean()
