"""DINO's self-distillation loss and center (Caron et al., ICCV'21, eq. 1-4 and Algorithm 1), two global views."""
from __future__ import annotations

import torch

from ..distributed import all_reduce_, world_size
from .common import full_precision, soft_cross_entropy


@full_precision
def dino_loss(student1: torch.Tensor, student2: torch.Tensor, teacher1: torch.Tensor, teacher2: torch.Tensor,
              center: torch.Tensor, teacher_temp: torch.Tensor | float, student_temp: float = 0.1) -> torch.Tensor:
    """1/2 [H(P_t(x_1), P_s(x_2)) + H(P_t(x_2), P_s(x_1))], H(a, b) = -mean_i sum_k a_ik log b_ik,
    P_t = softmax((g_t - c) / tau_t) (no gradient), P_s = softmax(g_s / tau_s).

    student*/teacher*: the K-dim head outputs of views 1 and 2 (this rank's rows); center: (1, K) or (K,);
    teacher_temp: a float or a 0-d tensor (a step-dependent value that does not recompile)."""
    p1 = torch.softmax((teacher1.detach() - center) / teacher_temp, dim=-1)
    p2 = torch.softmax((teacher2.detach() - center) / teacher_temp, dim=-1)
    return 0.5 * (soft_cross_entropy(p1, student2 / student_temp) + soft_cross_entropy(p2, student1 / student_temp))


@torch.no_grad()
def dino_center_update(center: torch.Tensor, teacher: torch.Tensor, momentum: float = 0.9) -> torch.Tensor:
    """c <- m c + (1 - m) mean of the teacher outputs over both views of the global batch (rows of all ranks;
    equal shards, so the mean of the all-reduced sum is the global mean)."""
    batch_center = all_reduce_(teacher.sum(dim=0, keepdim=True).to(center.dtype)) / (teacher.shape[0] * world_size())
    return center * momentum + batch_center * (1 - momentum)


def teacher_temperature(epoch: int, warmup: float = 0.04, final: float = 0.07, warmup_epochs: int = 30) -> float:
    """DINO's schedule: linspace(warmup, final, warmup_epochs)[epoch] during warm-up, then `final` (epoch-wise, as in
    the official code, solo-learn and lightly)."""
    if epoch >= warmup_epochs:
        return final
    if warmup_epochs == 1:
        return warmup
    if epoch == warmup_epochs - 1:
        return final
    return epoch * ((final - warmup) / (warmup_epochs - 1)) + warmup  # numpy.linspace's arithmetic
