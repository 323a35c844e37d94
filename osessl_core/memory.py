"""FIFO memory bank of embeddings, persistent in checkpoints, with a fill counter.

Shapes stay static (the whole bank plus a validity mask) so the step compiles and never syncs with the host.
"""
from __future__ import annotations

import torch
from torch import nn

from .distributed import gather_nograd


class MemoryBank(nn.Module):
    def __init__(self, size: int, dim: int):
        super().__init__()
        if size < 1:
            raise ValueError(f"memory size must be >= 1, got {size}")
        self.size = size
        # Persistent buffers: a resumed run continues with the same neighbours (lightly's non-persistent bank did not).
        self.register_buffer("bank", torch.zeros(size, dim))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))
        self.register_buffer("filled", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def enqueue(self, x: torch.Tensor) -> None:
        """Write the embeddings of all ranks (gathered, rank order) at the head of the queue, oldest overwritten."""
        x = gather_nograd(x.detach()).to(self.bank.dtype)
        n = x.shape[0]
        if n > self.size:
            raise ValueError(f"cannot enqueue {n} embeddings into a memory of {self.size}; raise the memory size")
        idx = (self.ptr + torch.arange(n, device=x.device)) % self.size
        self.bank.index_copy_(0, idx, x)
        self.ptr.copy_((self.ptr + n) % self.size)
        self.filled.copy_(torch.clamp(self.filled + n, max=self.size))

    def valid_mask(self) -> torch.Tensor:
        return torch.arange(self.size, device=self.bank.device) < self.filled

    def contents(self) -> torch.Tensor:
        """Filled rows, oldest first (for inspection and tests; syncs with the host)."""
        filled, ptr = int(self.filled), int(self.ptr)
        if filled < self.size:
            return self.bank[:filled].clone()
        return torch.cat([self.bank[ptr:], self.bank[:ptr]])
