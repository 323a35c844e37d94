"""Which images each step trains on: the one place that computes the global batch, the steps per epoch and each
rank's share of a step, for the device-resident and the streaming paths alike.

The order of an epoch is a function of (seed, epoch) only, so a resumed run (mid-epoch included) sees the same
batches, and the ranks of a distributed run together cover exactly the one-rank epoch.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


def epoch_order(seed: int, epoch: int, n: int) -> torch.Tensor:
    """The data order of one epoch: a permutation of range(n) that depends on (seed, epoch) only."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))


@dataclass(frozen=True)
class BatchPlan:
    """The global batch of a run and how it is split over the ranks; the last partial batch is dropped."""
    num_images: int
    batch_size: int   # per rank
    world_size: int = 1

    def __post_init__(self):
        if self.global_batch > self.num_images:
            raise ValueError(f"global batch {self.global_batch} ({self.world_size} rank(s) x {self.batch_size}) "
                             f"exceeds the {self.num_images} training images")

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.world_size

    @property
    def steps_per_epoch(self) -> int:
        return self.num_images // self.global_batch

    def locate(self, step: int) -> tuple[int, int]:
        """(epoch, step within the epoch) of a global step."""
        return divmod(step, self.steps_per_epoch)

    def rank_slice(self, step_in_epoch: int, rank: int) -> slice:
        """Rows of the epoch order that `rank` trains on at this step: its contiguous share of the global batch."""
        start = (step_in_epoch * self.world_size + rank) * self.batch_size
        return slice(start, start + self.batch_size)

    def rank_indices(self, seed: int, step: int, rank: int) -> torch.Tensor:
        """Dataset indices of `rank`'s share of global step `step` (CPU, int64)."""
        epoch, it = self.locate(step)
        return epoch_order(seed, epoch, self.num_images)[self.rank_slice(it, rank)]


def seeded_subset(n_total: int, n: int, seed: int, what: str = "subset") -> torch.Tensor:
    """n sorted indices of range(n_total), drawn with `seed` (subset / eval_test_subset)."""
    from ..config import ConfigError
    if n > n_total:
        raise ConfigError(f"{what}={n} is larger than the dataset ({n_total} images)")
    return torch.randperm(n_total, generator=torch.Generator().manual_seed(seed))[:n].sort().values
