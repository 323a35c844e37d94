from __future__ import annotations

import functools

import torch


def upcast(x):
    """Half-precision tensors to fp32; fp32/fp64 (and non-tensors) unchanged."""
    if isinstance(x, torch.Tensor) and x.dtype in (torch.float16, torch.bfloat16):
        return x.float()
    return x


def full_precision(fn):
    """Run a loss outside autocast, with half-precision inputs upcast.

    Casting inputs with .float() is not enough: under bf16 autocast every matmul is re-cast to bf16, and the
    Sinkhorn scores enter exp(S / 0.05), where bf16 rounding of S changes the weights by several percent.
    """
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        device = next((a.device.type for a in args if isinstance(a, torch.Tensor)), "cpu")
        with torch.autocast(device_type=device, enabled=False):
            return fn(*map(upcast, args), **{k: upcast(v) for k, v in kwargs.items()})
    return wrapper


@full_precision
def soft_cross_entropy(target: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """mean_i( -sum_j target_ij log_softmax(logits)_ij ), in full precision."""
    return -(target * torch.log_softmax(logits, dim=-1)).sum(dim=-1).mean()
