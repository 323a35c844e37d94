"""Where a run's training images come from, step by step: held on the device, or streamed from an image folder.

Both sources give the same thing for a global step: this rank's `Batch` of the epoch order (data/order.py), so
the loop, resume (mid-epoch included) and DDP do not depend on which one a dataset uses.
"""
from __future__ import annotations

import os
from typing import Any

import torch

from ..config import TrainConfig
from ..data import load_dataset
from ..data.order import BatchPlan, epoch_order, seeded_subset
from ..distributed import barrier, is_main_process
from ..methods import Batch, DataContext

STREAMED_DATASETS = ("imagenet100", "imagenet1k")
STREAM_ABOVE = 64  # px: an image folder whose images are larger than this is streamed, not held on the device


def streams(cfg: TrainConfig) -> bool:
    """Whether cfg's training data is streamed: the ImageNet datasets always; an image folder when its first
    training image is larger than STREAM_ABOVE px (small folders are decoded once and held on the device;
    docs/decisions.md#d-imagenet-1)."""
    if cfg.stream is not None:
        return cfg.stream
    if cfg.dataset in STREAMED_DATASETS:
        return True
    if cfg.dataset != "imagefolder":
        return False
    return max(first_image_size(cfg.data_root)) > STREAM_ABOVE


def first_image_size(root) -> tuple[int, int]:
    """(width, height) of the first training image of a folder (its header only); (0, 0) if there is none, and
    the resident loader then says what is missing."""
    from pathlib import Path

    from PIL import Image

    from ..data.datasets import IMAGE_EXTENSIONS
    train = Path(root) / "train"
    for folder in sorted(p for p in train.iterdir() if p.is_dir()) if train.is_dir() else []:
        for f in sorted(folder.iterdir()):
            if f.suffix.lower() in IMAGE_EXTENSIONS:
                with Image.open(f) as im:
                    return im.size
    return (0, 0)


def open_streamed(cfg: TrainConfig, split: str):
    """The streamed image folder of cfg (train, or the val/test split), with its class list."""
    from ..data.imagefolder import IMAGENET100_CLASS_LIST, open_image_folder
    classes = cfg.class_list
    if classes is None and cfg.dataset == "imagenet100":
        classes = IMAGENET100_CLASS_LIST
    return open_image_folder(cfg.data_root, split, classes=classes, image_size=cfg.image_size or 224,
                             bad_files=cfg.bad_files)


def load_train_data(cfg: TrainConfig):
    """cfg's training set (seeded subset applied): an ImageDataset on the resident path, else a streamed folder."""
    if streams(cfg):
        train = open_streamed(cfg, "train")
    else:
        if not is_main_process():
            barrier()  # let rank 0 decode and cache first, then read its cache
        train = load_dataset(cfg.dataset, cfg.data_root, "train", image_size=cfg.image_size)
        if is_main_process():
            barrier()
    if cfg.subset:
        train = train.subset(seeded_subset(len(train), cfg.subset, cfg.seed))
    return train


def data_context(train_set) -> DataContext:
    """What a method may know about the training data; streamed images are read on demand (e.g. the exemplars)."""
    if hasattr(train_set, "images"):
        return DataContext.of(train_set)
    from ..data.imagefolder import eval_view
    size = train_set.image_size
    stored = round(size * 256 / 224)  # room for the device's crops of the few images held (#d-imagenet-4)

    def read_images(indices: torch.Tensor) -> torch.Tensor:
        return torch.stack([eval_view(train_set.read(int(i)), stored) for i in indices])

    return DataContext(num_classes=train_set.num_classes, image_size=size, mean=train_set.mean, std=train_set.std,
                       train_labels=train_set.labels, classes=train_set.classes, read_images=read_images)


class ResidentBatches:
    """The whole training set as uint8 on the device; views are cropped there."""

    def __init__(self, train_set, plan: BatchPlan, seed: int, rank: int, device: torch.device):
        self.images = train_set.images.to(device)
        self.plan, self.seed, self.rank, self.device = plan, seed, rank, device
        self._epoch = None

    def __call__(self, step: int) -> Batch:
        epoch, it = self.plan.locate(step)
        if self._epoch != epoch:
            self._order = epoch_order(self.seed, epoch, self.plan.num_images).to(self.device)
            self._epoch = epoch
        ids = self._order[self.plan.rank_slice(it, self.rank)]
        return Batch(ids, self.plan.global_batch, self.plan.batch_size * self.rank, images=self.images[ids])

    def close(self) -> None:
        pass


class StreamedBatches:
    """Images decoded per batch by loader workers, which also cut every view's crop (data/loader.py)."""

    def __init__(self, train_set, plan: BatchPlan, seed: int, rank: int, device: torch.device, pipelines,
                 workers: int | None, backend: str):
        self.train_set, self.plan, self.seed, self.rank, self.device = train_set, plan, seed, rank, device
        self.pipelines, self.backend = list(pipelines), backend
        self.workers = min(8, os.cpu_count() or 1) if workers is None else workers
        self._iter, self._next = None, None

    def __call__(self, step: int) -> Batch:
        if self._next != step:  # first call, or a jump (resume): restart the loader at this step
            self.close()
            from ..data.loader import view_batches
            self._iter = iter(view_batches(self.train_set, self.pipelines, self.seed, self.plan.batch_size,
                                           world_size=self.plan.world_size, rank=self.rank, start_step=step,
                                           workers=self.workers, backend=self.backend, device=self.device))
        crops, ids = next(self._iter)
        self._next = step + 1
        return Batch(ids, self.plan.global_batch, self.plan.batch_size * self.rank, crops=crops,
                     pipelines=self.pipelines)

    def close(self) -> None:
        self._iter = self._next = None  # the DataLoader's workers exit with their iterator


def batch_source(cfg: TrainConfig, train_set, plan: BatchPlan, rank: int, device: torch.device, method) -> Any:
    if hasattr(train_set, "images"):
        return ResidentBatches(train_set, plan, cfg.seed, rank, device)
    return StreamedBatches(train_set, plan, cfg.seed, rank, device, method.view_pipelines(), cfg.loader_workers,
                           cfg.decode)
