"""Batch statistics over all ranks.

On CUDA we use torch's SyncBatchNorm. It refuses CPU tensors, so distributed CPU runs (gloo, used by the tests
that prove N ranks == 1 rank) use `GlobalBatchNorm`: the same maths, with the sums all-reduced by an
autograd-aware collective so gradients through the statistics are exact.
"""
from __future__ import annotations

import torch
from torch import nn

from ..distributed import all_reduce_with_grad, is_distributed
from ..losses.common import upcast


class GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    def _check_input_dim(self, x):
        if x.dim() not in (2, 4):
            raise ValueError(f"expected 2-D or 4-D input, got {x.dim()}-D")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and is_distributed()):
            return super().forward(x)
        dims = [0] + list(range(2, x.dim()))
        shape = [1, -1] + [1] * (x.dim() - 2)
        xf = upcast(x)
        c = x.shape[1]
        stats = all_reduce_with_grad(torch.cat([xf.sum(dims), xf.new_tensor([xf.numel() / c])]))
        n = stats[-1]
        mean = stats[:c] / n
        # Two passes (mean, then centred squares) like a local BN: E[x^2] - mean^2 loses precision in fp32.
        var = all_reduce_with_grad(((xf - mean.view(shape)) ** 2).sum(dims)) / n  # biased, as BN normalises
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = self.momentum
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_(var.detach() * n / (n - 1), alpha=m)
        y = (xf - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(x.dtype)


def convert_sync_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """Replace every BatchNorm by its synchronised version (no-op without a process group)."""
    if not is_distributed():
        return module
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    return _convert_global(module)


def _convert_global(module: nn.Module) -> nn.Module:
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, GlobalBatchNorm):
        new = GlobalBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                              module.track_running_stats)
        # Reuse the Parameter and buffer objects: requires_grad (False in the momentum network) is kept.
        for name, p in module.named_parameters(recurse=False):
            setattr(new, name, p)
        for name, b in module.named_buffers(recurse=False):
            setattr(new, name, b)
        return new
    for name, child in module.named_children():
        setattr(module, name, _convert_global(child))
    return module
