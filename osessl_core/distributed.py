"""Process-group helpers that are no-ops in a single process.

Every collective used by the library goes through here, so the same code runs under `torchrun` (NCCL or gloo)
and in a plain `python` process without initialising a process group.
"""
from __future__ import annotations

import warnings

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def is_main_process() -> bool:
    return rank() == 0


@torch.no_grad()
def gather_nograd(x: torch.Tensor) -> torch.Tensor:
    """Concatenate `x` from all ranks along dim 0 (rank order); no gradient flows back."""
    if not is_distributed():
        return x
    parts = [torch.empty_like(x) for _ in range(world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


@torch.no_grad()
def all_reduce_(x: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """In-place all-reduce for no-grad statistics (Sinkhorn sums). Never use it on tensors that need gradients:
    a raw all_reduce has no backward and would silently rescale gradients."""
    if is_distributed():
        dist.all_reduce(x, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM)
    return x


def shard_bounds(n: int, r: int | None = None, w: int | None = None) -> tuple[int, int]:
    """Contiguous [start, end) of `n` items owned by rank r (sizes differ by at most one)."""
    r = rank() if r is None else r
    w = world_size() if w is None else w
    base, extra = divmod(n, w)
    start = r * base + min(r, extra)
    return start, start + base + (1 if r < extra else 0)


def gather_with_grad(x: torch.Tensor, sizes: list[int] | None = None) -> torch.Tensor:
    """Concatenate `x` from all ranks (rank order), sizes may differ along dim 0; gradients flow back to their
    rank (summed over the ranks that used them). Uses torch's autograd-aware collective, not a raw all_gather.
    Pass the per-rank `sizes` when they are known (e.g. from `shard_bounds`) to skip exchanging them, which
    costs a collective and a host sync."""
    if not is_distributed():
        return x
    with warnings.catch_warnings():  # deprecated in favour of a private API; still autograd-aware
        warnings.simplefilter("ignore", FutureWarning)
        from torch.distributed.nn.functional import all_gather
    if sizes is None:
        n = torch.tensor([x.shape[0]], device=x.device)
        counts = [torch.zeros_like(n) for _ in range(world_size())]
        dist.all_gather(counts, n)
        sizes = [int(s) for s in counts]
    pad = max(sizes) - x.shape[0]
    if pad:  # all_gather needs equal shapes: pad with zero rows, dropped again below
        x = torch.cat([x, x.new_zeros(pad, *x.shape[1:])])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        parts = all_gather(x)
    return torch.cat([p[:s] for p, s in zip(parts, sizes)])


def all_reduce_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Sum over ranks with a backward pass (sum of the gradients), for statistics that carry gradients."""
    if not is_distributed():
        return x
    from torch.distributed.nn.functional import all_reduce
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return all_reduce(x)


def agree_any(flag: bool, device: torch.device | str = "cpu") -> bool:
    """True on every rank if it is True on any rank (e.g. one rank ran out of time): keeps ranks in step."""
    if not is_distributed():
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def init_from_env() -> bool:
    """Initialise the process group from torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_*).

    NCCL when CUDA is available, gloo otherwise; sets the CUDA device to LOCAL_RANK. Returns whether a group
    with more than one process is active. A plain `python` run (no WORLD_SIZE) initialises nothing.
    """
    import os
    if is_distributed() or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return is_distributed()
    cuda = torch.cuda.is_available() and os.environ.get("OSESSL_DIST_BACKEND", "") != "gloo"
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if cuda else "gloo")
    return True
