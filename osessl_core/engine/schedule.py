"""Per-iteration schedules (ReSA, docs/decisions.md#d-resa-4)."""
from __future__ import annotations

import math


def scaled_lr(base_lr: float, global_batch: int) -> float:
    """Linear scaling rule: lr = base_lr * global_batch / 256."""
    return base_lr * global_batch / 256


def lr_at(step: int, total_steps: int, warmup_steps: int, peak_lr: float, final_ratio: float = 0.1) -> float:
    """Linear warm-up from 0, then cosine from peak_lr down to final_ratio * peak_lr (ReSA keeps lr away from 0)."""
    if step < warmup_steps:
        return peak_lr * step / warmup_steps
    t = (step - warmup_steps) / max(total_steps - warmup_steps, 1)
    final = peak_lr * final_ratio
    return final + (peak_lr - final) * 0.5 * (1.0 + math.cos(math.pi * min(t, 1.0)))
