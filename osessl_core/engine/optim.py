"""The pre-training optimiser: SGD (ReSA, docs/decisions.md#d-resa-4), LARS (You et al. 2017) and AdamW.

`build_optimizer(params, name, lr, momentum, weight_decay, fused)`:

- "sgd": `torch.optim.SGD` with weight decay on every parameter, BN and biases included, exactly as the trainer
  built it before this module existed (ReSA's code does the same), so CIFAR runs are bit-identical.
- "lars": `LARS` below. Neither OSESSL nor ReSA uses it (ReSA B.2: "The SGD optimizer is used"; AdamW for
  ViT-S/16, Table 8); it is here for the rivals that were published with it (SimCLR, BYOL) and for large-batch runs.
- "adamw": `torch.optim.AdamW` (default betas) with weight decay on every parameter, as ReSA's ViT code does
  (`src/utils.py: build_optimizer`); `momentum` is unused. (TrainConfig.optimizer does not offer it yet.)

LARS. Per tensor w with gradient g, weight decay beta and trust coefficient eta (You et al. 2017, eq. 6):

    local_lr = eta * ||w|| / (||g|| + beta * ||w|| + eps)        (1 where ||w|| = 0)
    v <- m * v + local_lr * (g + beta * w);   w <- w - lr * v

(the first step sets v to its update, as torch's SGD does). Tensors with at most one dimension, i.e. biases and
BN/LayerNorm scales and shifts, get neither weight decay nor the adaptation: plain SGD momentum on g. BYOL states
this ("excluding the biases and batch normalization parameters from both LARS adaptation and weight decay",
Grill et al. 2020, Appendix A, "Optimization"); MoCo v3's LARS selects them the same way, by `ndim`.

Against `lightly.utils.lars.LARS` (its tests/test_recipes.py comparison): the same formula and eps, but lightly
excludes a tensor by its group's weight_decay being 0, so (a) a run with weight_decay 0 is plain SGD there, while
here matrices keep the adaptation, and (b) where a gradient is exactly zero lightly skips the decay term, while here
the formula applies (an update of lr * eta * w). With weight_decay > 0 and non-zero gradients the updates agree.
Everything stays on the device: norms and ratios are tensors, no `.item()`.
"""
from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

OPTIMIZERS = ("sgd", "lars", "adamw")


class LARS(torch.optim.Optimizer):
    """SGD with momentum and layer-wise adaptive rate scaling; see the module docstring for the update."""

    def __init__(self, params, lr: float, momentum: float = 0.9, weight_decay: float = 0.0,
                 trust_coefficient: float = 0.001, eps: float = 1e-8, exclude_1d: bool = True):
        if lr < 0 or not 0 <= momentum < 1 or weight_decay < 0 or trust_coefficient <= 0:
            raise ValueError(f"LARS: invalid lr={lr}, momentum={momentum}, weight_decay={weight_decay} "
                             f"or trust_coefficient={trust_coefficient}")
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay,
                                      trust_coefficient=trust_coefficient, eps=eps, exclude_1d=exclude_1d))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            with_grad = [p for p in group["params"] if p.grad is not None]
            is_adapted = [p.ndim > 1 or not group["exclude_1d"] for p in with_grad]
            adapt = [p for p, a in zip(with_grad, is_adapted) if a]
            plain = [p for p, a in zip(with_grad, is_adapted) if not a]
            updates: list[torch.Tensor] = []
            if adapt:
                grads = [p.grad for p in adapt]
                wd, eta = group["weight_decay"], group["trust_coefficient"]
                w_norm = torch.stack(torch._foreach_norm(adapt))
                g_norm = torch.stack(torch._foreach_norm(grads))
                # where ||w|| = 0 (a zero-initialised weight) the ratio would freeze it for good: use 1 instead
                ratio = torch.where(w_norm > 0, eta * w_norm / (g_norm + wd * w_norm + group["eps"]),
                                    torch.ones_like(w_norm))
                upd = torch._foreach_add(grads, adapt, alpha=wd) if wd else [g.clone() for g in grads]
                torch._foreach_mul_(upd, list(ratio.unbind()))
                updates += upd
            if plain:
                updates += [p.grad for p in plain]
            params = adapt + plain
            if not params:
                continue
            if group["momentum"]:
                updates = self._momentum(params, updates, group["momentum"])
            torch._foreach_add_(params, updates, alpha=-group["lr"])
        return loss

    def _momentum(self, params: list[torch.Tensor], updates: list[torch.Tensor], m: float) -> list[torch.Tensor]:
        """v <- m v + u per tensor (v = u on a tensor's first step, as torch's SGD); returns the buffers."""
        old = [i for i, p in enumerate(params) if "momentum_buffer" in self.state[p]]
        new = [i for i, p in enumerate(params) if "momentum_buffer" not in self.state[p]]
        for i in new:
            self.state[params[i]]["momentum_buffer"] = updates[i].detach().clone()
        if old:
            bufs = [self.state[params[i]]["momentum_buffer"] for i in old]
            torch._foreach_mul_(bufs, m)
            torch._foreach_add_(bufs, [updates[i] for i in old])
        return [self.state[p]["momentum_buffer"] for p in params]


def _tensors(params_or_named_params: Iterable) -> list[nn.Parameter]:
    """Parameters from an iterable of tensors or of (name, tensor) pairs (`named_parameters()`)."""
    out = [p[1] if isinstance(p, tuple) else p for p in params_or_named_params]
    return [p for p in out if p.requires_grad]


def build_optimizer(params_or_named_params: Iterable, name: str, lr: float, momentum: float, weight_decay: float,
                    fused: bool = False) -> torch.optim.Optimizer:
    """The optimiser `name` ("sgd" | "lars" | "adamw") over the parameters that require a gradient.

    `fused` selects torch's fused kernels for sgd/adamw (the trainer passes it on CUDA); LARS always uses the
    multi-tensor (`_foreach`) path."""
    params = _tensors(params_or_named_params)
    kernel = {"fused": True} if fused else {}  # not passed at all otherwise, so torch's own default applies
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay, **kernel)
    if name == "lars":
        return LARS(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, **kernel)
    raise ValueError(f"unknown optimizer {name!r}; choose one of {list(OPTIMIZERS)}")
