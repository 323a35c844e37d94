"""OSESSL's exemplar-guided terms, eqs. 2-13 of the paper (resolutions: docs/decisions.md#osessl).

All functions take embeddings as given (the method passes L2-normalised projector outputs) and compute outside
autocast, in fp32 (or the inputs' fp64).
"""
from __future__ import annotations

import torch

from .common import full_precision, soft_cross_entropy


@torch.no_grad()
@full_precision
def discriminative_scores(z_l: torch.Tensor, memory: torch.Tensor, alpha: float = 0.75) -> torch.Tensor:
    """Eq. 2: s_c(j) = alpha <z_l^c, m_j> - (1-alpha) max_{c' != c} <z_l^c', m_j>, shape [C, M].

    No gradient: neighbour selection is a discrete choice. With a single class the max over other classes is 0.
    """
    sim = z_l.detach() @ memory.detach().T
    n_classes = sim.shape[0]
    if n_classes == 1:
        other = torch.zeros_like(sim)
    else:
        top2 = sim.topk(2, dim=0)  # best and second-best class for every memory item
        is_best = top2.indices[0].unsqueeze(0) == torch.arange(n_classes, device=sim.device).unsqueeze(1)
        other = torch.where(is_best, top2.values[1].unsqueeze(0), top2.values[0].unsqueeze(0))
    return alpha * sim - (1.0 - alpha) * other


@full_precision
def exemplar_prototypes(z_l: torch.Tensor, memory: torch.Tensor, k: int = 8, alpha: float = 0.75,
                        valid: torch.Tensor | None = None, normalize: bool = False, detach_weights: bool = False):
    """Eqs. 2-4: prototype c = sum_j pi_j q_j over Q_c = [z_l^c; top-k memory rows by eq. 2].

    Returns (prototypes [C, d], weights [C, k+1] with column 0 the exemplar, neighbours [C, k] memory indices).
    `valid` masks unfilled memory slots: they are never preferred and get weight 0, so with fewer than k filled
    slots the prototype falls back on the exemplar (exactly z_l when the bank is empty). Gradients flow through
    z_l in both the components and the weights (docs/decisions.md#d-osessl-5); memory rows are constants.
    """
    z_l = z_l
    memory = memory.detach()
    scores = discriminative_scores(z_l, memory, alpha)
    if valid is not None:
        scores = scores.masked_fill(~valid.unsqueeze(0), float("-inf"))
    neighbours = scores.topk(min(k, memory.shape[0]), dim=1).indices  # [C, k]
    components = torch.cat([z_l.unsqueeze(1), memory[neighbours]], dim=1)  # [C, k+1, d]
    logits = torch.einsum("cd,cjd->cj", z_l, components)  # eq. 4, temperature 1 as written
    if valid is not None:
        keep = torch.cat([torch.ones_like(neighbours[:, :1], dtype=torch.bool), valid[neighbours]], dim=1)
        logits = logits.masked_fill(~keep, float("-inf"))
    weights = torch.softmax(logits, dim=1)
    if detach_weights:
        weights = weights.detach()
    prototypes = torch.einsum("cj,cjd->cd", weights, components)
    if normalize:  # ablation only; eq. 4 does not re-normalise
        prototypes = torch.nn.functional.normalize(prototypes, dim=1)
    return prototypes, weights, neighbours


@full_precision
def prototype_probabilities(z: torch.Tensor, prototypes: torch.Tensor, tau: float) -> torch.Tensor:
    """Eq. 5: softmax_c(<z_i, c_c> / tau)."""
    return torch.softmax(z @ prototypes.T / tau, dim=1)


@full_precision
def prototype_alignment_loss(z_student: torch.Tensor, z_teacher: torch.Tensor, prototypes: torch.Tensor,
                             tau_s: float = 0.1, tau_t: float = 0.04) -> torch.Tensor:
    """Eqs. 5-6: L_align = -mean_i sum_c p'_ic log p_ic; the teacher side (z' and c) is fully detached."""
    target = prototype_probabilities(z_teacher.detach(), prototypes.detach(), tau_t)
    return soft_cross_entropy(target, z_student @ prototypes.T / tau_s)


@full_precision
def prototype_dispersion_loss(prototypes: torch.Tensor, tau_s: float = 0.1) -> torch.Tensor:
    """Eq. 9: mean over ordered pairs c != c' of <c_c, c_c'> / tau_s (linear, may be negative)."""
    c = prototypes
    n = c.shape[0]
    if n < 2:
        return c.sum() * 0.0
    gram = c @ c.T
    return (gram.sum() - gram.diagonal().sum()) / (n * (n - 1)) / tau_s


@full_precision
def interpolation_losses(z_mix: torch.Tensor, z_teacher: torch.Tensor, prototypes: torch.Tensor,
                         p_weak: torch.Tensor, p_teacher: torch.Tensor, beta, perm: torch.Tensor,
                         tau_s: float = 0.1, index: torch.Tensor | None = None):
    """Eqs. 11-13 for x_m = beta x + (1-beta) x'[perm].

    L_mix-proto = CE(z_m c^T / tau_s, beta p + (1-beta) p'[perm]) with both targets detached;
    L_mix-ins   = -mean_i [beta log softmax(z_m z'^T/tau_s)_{i,i} + (1-beta) log softmax(...)_{i,perm(i)}],
    z' being the momentum strong-view embedding (detached). Under DDP, z' and p' hold the whole global batch,
    `perm` gives each local row's partner and `index` its own position in that batch (default: 0..n-1).
    """
    beta = torch.as_tensor(beta, dtype=z_mix.dtype, device=z_mix.device)
    target = beta * p_weak.detach() + (1.0 - beta) * p_teacher.detach()[perm]
    l_proto = soft_cross_entropy(target, z_mix @ prototypes.T / tau_s)
    log_p = torch.log_softmax(z_mix @ z_teacher.detach().T / tau_s, dim=1)
    rows = torch.arange(z_mix.shape[0], device=z_mix.device)
    own = rows if index is None else index
    l_ins = -(beta * log_p[rows, own] + (1.0 - beta) * log_p[rows, perm]).mean()
    return l_proto, l_ins
