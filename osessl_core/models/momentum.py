"""Momentum (EMA) teacher: parameters follow the online network, BN buffers are the teacher's own (ReSA)."""
from __future__ import annotations

import copy
import math

import torch
from torch import nn


def momentum_copy(module: nn.Module) -> nn.Module:
    teacher = copy.deepcopy(module)
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


@torch.no_grad()
def ema_update_(teacher: nn.Module, student: nn.Module, m: float) -> None:
    """theta' <- m theta' + (1 - m) theta, on parameters only (BN running stats are not averaged)."""
    t = [p for p in teacher.parameters()]
    s = [p.detach() for p in student.parameters()]
    torch._foreach_lerp_(t, s, 1.0 - m)


def momentum_at(step: int, total_steps: int, base: float = 0.996) -> float:
    """Per-iteration cosine schedule from `base` to 1, no warm-up: m_t = 1 - (1-base)(1+cos(pi t/T))/2."""
    return 1.0 - (1.0 - base) * (1.0 + math.cos(math.pi * step / max(total_steps, 1))) / 2.0
