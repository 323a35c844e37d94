"""What a run shows while it trains, besides metrics.jsonl (the source of truth):

- `KnnMonitor`: a cheap accuracy signal during pretraining, like solo-learn's online k-NN: every N epochs, the
  evaluated network's 5-NN top-1 on a fixed seeded subset (a train bank and test queries), on the device. It
  runs between steps (eval mode, no gradients, the run's generators untouched), so the step keeps no host sync
  and resume stays bit-exact; the final evaluation (engine/evaluate.py) uses the same protocol on all images.
- `TensorBoardLog`: the same rows as scalars under <run_dir>/tensorboard (optional: `pip install tensorboard`).
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..config import ConfigError
from ..eval import extract_features, knn_accuracy


class KnnMonitor:
    def __init__(self, train_set, test_set, n_train: int, n_test: int, seed: int, device: torch.device):
        from .evaluate import eval_normalization
        bank = _fixed_subset(len(train_set), n_train, seed)
        queries = _fixed_subset(len(test_set), n_test, seed + 1)
        self.train_images, self.train_labels = train_set.images[bank], train_set.labels[bank].to(device)
        self.test_images, self.test_labels = test_set.images[queries], test_set.labels[queries].to(device)
        self.mean, self.std = eval_normalization(train_set)
        self.device = device

    @torch.no_grad()
    def __call__(self, method) -> float:
        encoder = method.eval_encoder()
        train_f = extract_features(encoder, self.train_images, self.mean, self.std, device=self.device)
        test_f = extract_features(encoder, self.test_images, self.mean, self.std, device=self.device)
        return knn_accuracy(train_f.to(self.device), self.train_labels, test_f.to(self.device), self.test_labels,
                            k=5)


def _fixed_subset(n_total: int, n: int, seed: int) -> torch.Tensor:
    """The same images at every check (and on resume): a function of the seed only."""
    return torch.randperm(n_total, generator=torch.Generator().manual_seed(seed))[:min(n, n_total)].sort().values


class TensorBoardLog:
    def __init__(self, run_dir: Path):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ConfigError("tensorboard=True needs the tensorboard package: pip install tensorboard "
                              "(or the project's [tensorboard] extra)") from None
        self.writer = SummaryWriter(str(Path(run_dir) / "tensorboard"))

    def log(self, row: dict) -> None:
        for key, value in row.items():
            if key not in ("step", "steps") and isinstance(value, (int, float)) and not isinstance(value, bool):
                self.writer.add_scalar(f"train/{key}", value, row["step"])
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
