from __future__ import annotations

import torch


def soft_cross_entropy(target: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """mean_i( -sum_j target_ij log_softmax(logits)_ij ), computed in fp32."""
    return -(target.float() * torch.log_softmax(logits.float(), dim=-1)).sum(dim=-1).mean()
