"""Batches of a streamed image folder: each rank decodes only its share of each step, in DataLoader workers.

`view_batches` yields, for every global step from `start_step`, this rank's `(crops, ids)`: the indices are
`BatchPlan(len(dataset), batch_size, world_size).rank_indices(seed, step, rank)` and the crops of an image are a
function of (seed, epoch, index) only (`imagefolder.view_uniforms`), so a run resumed at step s, a run with
another worker count and the ranks of a distributed run together all see exactly the batches of one straight
one-rank run. `eval_batches` yields a split in order, each rank a contiguous shard, with the ImageNet test view.

Backends of `view_batches`:
* "cpu": workers decode (torchvision.io, PIL for the rest), crop and resize; the main process only copies.
* "nvjpeg": workers read the file bytes and compute the crop boxes from the JPEG header; the main process
  decodes the batch with `torchvision.io.decode_jpeg(list, device=device)` and cuts the same boxes on `device`.
  Files that are not RGB/greyscale JPEGs, or that the batched decoder rejects, take the "cpu" path, so a batch
  is always complete. With device="cpu" the same code runs on torchvision's CPU JPEG decoder (how it is tested).
"""
from __future__ import annotations

import itertools
import os
from typing import Iterator

import torch
from torch.utils.data import DataLoader, Dataset

from .datasets import _quiet_decoding
from .imagefolder import (ImageFolderStream, cut_view, eval_view, jpeg_header, train_views, view_boxes,
                          view_uniforms)
from .order import BatchPlan, epoch_order

BACKENDS = ("cpu", "nvjpeg")


def default_workers() -> int:
    return min(8, os.cpu_count() or 1)


# ---------------------------------------------------------------------------------------------- training views

class _StepSampler:
    """Batch sampler over global steps [start, stop): this rank's [(epoch, index), ...] of each step."""

    def __init__(self, plan: BatchPlan, seed: int, rank: int, start: int, stop: int | None):
        self.plan, self.seed, self.rank, self.start, self.stop = plan, seed, rank, start, stop

    def __len__(self) -> int:
        if self.stop is None:
            raise TypeError("unbounded step range (stop_step=None) has no length")
        return self.stop - self.start

    def __iter__(self):
        epoch_cached, order = None, None
        steps = itertools.count(self.start) if self.stop is None else range(self.start, self.stop)
        for step in steps:
            epoch, it = self.plan.locate(step)
            if epoch != epoch_cached:  # one permutation per epoch, not per step (BatchPlan.rank_indices' rows)
                epoch_cached, order = epoch, epoch_order(self.seed, epoch, self.plan.num_images)
            yield [(epoch, i) for i in order[self.plan.rank_slice(it, self.rank)].tolist()]


class _ViewTask(Dataset):
    """What a worker does with one (epoch, index): its crops ("cpu"), or its bytes and boxes ("nvjpeg")."""

    def __init__(self, dataset: ImageFolderStream, views, seed: int, backend: str):
        self.dataset, self.views, self.seed, self.backend = dataset._worker_copy(), list(views), seed, backend

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key):
        epoch, index = key
        ds = self.dataset
        seen = len(ds._bad)
        u = view_uniforms(self.seed, epoch, index, len(self.views))
        item = {"epoch": epoch, "index": index}
        hw = None
        if self.backend == "nvjpeg":
            used, data = ds.load_bytes(index)
            hw = jpeg_header(data)
            if hw is not None:
                item["used"] = used
                item["data"] = torch.frombuffer(bytearray(data), dtype=torch.uint8)
                item["hw"] = hw
                item["boxes"], item["flips"] = view_boxes(hw[0], hw[1], self.views, u)
        if hw is None:
            item["used"], image = ds.load(index)
            item["crops"] = train_views(image, self.views, u)
        # Bad files met here; the main process records and warns about them (once per file).
        item["skips"] = _new_skips(ds, seen)
        return item


def _new_skips(ds: ImageFolderStream, seen: int) -> list[tuple[int, str]]:
    """(index, reason) of the files found bad since ds._bad held `seen` entries (dicts keep insertion order)."""
    return list(ds._bad.items())[seen:] if len(ds._bad) > seen else []


def _collate_crops(items: list[dict]) -> dict:
    """cpu backend, in the worker: one B x 3 x S x S tensor per view."""
    return {"crops": [torch.stack([it["crops"][v] for it in items]) for v in range(len(items[0]["crops"]))],
            "used": torch.tensor([it["used"] for it in items], dtype=torch.int64),
            "skips": [s for it in items for s in it["skips"]]}


def _collate_list(items: list[dict]) -> list[dict]:
    return items


class ViewBatches:
    """Iterable over global steps [start_step, stop_step) of this rank's (crops, ids); see `view_batches`.

    len() is the number of steps (stop_step - start_step); with stop_step=None it runs until the caller stops.
    Step k of the iteration is global step start_step + k, so a trainer resumed at step s passes start_step=s.
    """

    def __init__(self, dataset: ImageFolderStream, views, seed: int, batch_size: int, world_size: int = 1,
                 rank: int = 0, start_step: int = 0, stop_step: int | None = None, workers: int | None = None,
                 backend: str = "cpu", device="cpu", pin_memory: bool | None = None, prefetch_factor: int = 4):
        if not isinstance(dataset, ImageFolderStream):
            raise TypeError(f"expected an ImageFolderStream, got {type(dataset).__name__}")
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; expected one of {', '.join(BACKENDS)}")
        if not views:
            raise ValueError("need at least one view")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world size {world_size}")
        if start_step < 0 or (stop_step is not None and stop_step < start_step):
            raise ValueError(f"bad step range [{start_step}, {stop_step})")
        self.dataset, self.views, self.seed = dataset, list(views), int(seed)
        self.plan = BatchPlan(len(dataset), batch_size, world_size)
        self.rank, self.start_step, self.stop_step = rank, start_step, stop_step
        self.workers = default_workers() if workers is None else int(workers)
        self.backend, self.device = backend, torch.device(device)
        # Pinned pages only pay off for host->GPU copies of whole batches (the cpu backend's crops).
        self.pin_memory = (self.device.type == "cuda" and backend == "cpu") if pin_memory is None else pin_memory
        self.prefetch_factor = prefetch_factor
        self._loader = None

    @property
    def steps_per_epoch(self) -> int:
        return self.plan.steps_per_epoch

    def __len__(self) -> int:
        if self.stop_step is None:
            raise TypeError("view_batches(stop_step=None) is unbounded; pass stop_step for a length")
        return self.stop_step - self.start_step

    def _make_loader(self) -> DataLoader:
        task = _ViewTask(self.dataset, self.views, self.seed, self.backend)
        sampler = _StepSampler(self.plan, self.seed, self.rank, self.start_step, self.stop_step)
        return _data_loader(task, sampler, _collate_crops if self.backend == "cpu" else _collate_list,
                            self.workers, self.pin_memory, self.prefetch_factor, self.seed)

    def __iter__(self) -> Iterator[tuple[list[torch.Tensor], torch.Tensor]]:
        if self._loader is None:
            self._loader = self._make_loader()  # kept: persistent workers survive a second pass
        for batch in self._loader:
            if self.backend == "cpu":
                _adopt_skips(self.dataset, batch["skips"])
                crops = [c.to(self.device, non_blocking=True) for c in batch["crops"]]
                ids = batch["used"]
            else:
                crops, ids = self._device_views(batch)
            yield crops, ids.to(self.device, non_blocking=True)

    def _device_views(self, items: list[dict]) -> tuple[list[torch.Tensor], torch.Tensor]:
        """nvjpeg: decode the batch's JPEGs on the device, cut their boxes there; the rest is already cut."""
        for it in items:
            _adopt_skips(self.dataset, it["skips"])
        jpegs = [it for it in items if "data" in it]
        images = _decode_jpegs([it["data"] for it in jpegs], self.device)
        decoded = {id(it): img for it, img in zip(jpegs, images)}
        per_view: list[list[torch.Tensor]] = [[] for _ in self.views]
        used = []
        for it in items:
            img = decoded.get(id(it))
            if "crops" in it:
                crops = [c.to(self.device, non_blocking=True) for c in it["crops"]]
            elif img is not None and tuple(img.shape) == (3, *it["hw"]):
                crops = [cut_view(img, it["boxes"][v], view.size, view.kind, bool(it["flips"][v]))
                         for v, view in enumerate(self.views)]
            else:  # the device decoder refused it: decode here exactly as the cpu backend would
                it["used"], image = self.dataset.load(it["index"])
                u = view_uniforms(self.seed, it["epoch"], it["index"], len(self.views))
                crops = [c.to(self.device) for c in train_views(image, self.views, u)]
            for v, c in enumerate(crops):
                per_view[v].append(c)
            used.append(it["used"])
        return [torch.stack(c) for c in per_view], torch.tensor(used, dtype=torch.int64)


def _decode_jpegs(data: list[torch.Tensor], device: torch.device) -> list[torch.Tensor | None]:
    """Batched decode_jpeg on `device`; if the batch call fails, image by image (None where that fails too)."""
    if not data:
        return []
    from torchvision.io import ImageReadMode, decode_jpeg

    with _quiet_decoding():
        try:
            return list(decode_jpeg(data, mode=ImageReadMode.RGB, device=device))
        except Exception:  # one bad image fails the whole batched call; find it
            out = []
            for d in data:
                try:
                    out.append(decode_jpeg(d, mode=ImageReadMode.RGB, device=device))
                except Exception:
                    out.append(None)
            return out


def _adopt_skips(dataset: ImageFolderStream, skips) -> None:
    for j, reason in skips:
        dataset._record_bad(int(j), reason)


def _data_loader(task, sampler, collate, workers: int, pin_memory: bool, prefetch_factor: int, seed: int):
    if workers < 0:
        raise ValueError(f"workers must be >= 0, got {workers}")
    return DataLoader(task, batch_sampler=sampler, num_workers=workers, collate_fn=collate,
                      pin_memory=pin_memory, persistent_workers=workers > 0,
                      prefetch_factor=prefetch_factor if workers > 0 else None,
                      # Its own generator: creating the loader must not draw from the trainer's global RNG.
                      generator=torch.Generator().manual_seed(seed))


def view_batches(dataset: ImageFolderStream, views, seed: int, batch_size: int, world_size: int = 1, rank: int = 0,
                 start_step: int = 0, stop_step: int | None = None, workers: int | None = None,
                 backend: str = "cpu", device="cpu", pin_memory: bool | None = None,
                 prefetch_factor: int = 4) -> ViewBatches:
    """This rank's (crops, ids) for each global step in [start_step, stop_step): crops is one uint8
    B x 3 x S x S tensor per view, ids the int64 dataset indices (B,), both on `device`.

    batch_size is per rank. workers: DataLoader processes (None: min(8, CPUs); 0: in this process).
    With bad_files='skip' an id is the index whose pixels were used (its substitute for an unreadable file)."""
    return ViewBatches(dataset, views, seed, batch_size, world_size, rank, start_step, stop_step, workers,
                       backend, device, pin_memory, prefetch_factor)


# ---------------------------------------------------------------------------------------------- evaluation

class _EvalTask(Dataset):
    def __init__(self, dataset: ImageFolderStream, size: int):
        self.dataset, self.size = dataset._worker_copy(), size

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index):
        ds = self.dataset
        seen = len(ds._bad)
        used, image = ds.load(index)
        return {"image": eval_view(image, self.size), "used": used,
                "skips": _new_skips(ds, seen)}


def _collate_eval(items: list[dict]) -> dict:
    return {"images": torch.stack([it["image"] for it in items]),
            "used": torch.tensor([it["used"] for it in items], dtype=torch.int64),
            "skips": [s for it in items for s in it["skips"]]}


class _ShardSampler:
    def __init__(self, start: int, stop: int, batch_size: int):
        self.start, self.stop, self.batch_size = start, stop, batch_size

    def __len__(self) -> int:
        return -(-(self.stop - self.start) // self.batch_size)

    def __iter__(self):
        for b in range(self.start, self.stop, self.batch_size):
            yield list(range(b, min(b + self.batch_size, self.stop)))


class EvalBatches:
    """Iterable over this rank's contiguous shard of the split, in order: (images, labels, ids) batches."""

    def __init__(self, dataset: ImageFolderStream, size: int = 224, batch_size: int = 256, world_size: int = 1,
                 rank: int = 0, workers: int | None = None, device="cpu"):
        if not isinstance(dataset, ImageFolderStream):
            raise TypeError(f"expected an ImageFolderStream, got {type(dataset).__name__}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world size {world_size}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        n = len(dataset)
        self.dataset, self.size, self.device = dataset, size, torch.device(device)
        self.start, self.stop = n * rank // world_size, n * (rank + 1) // world_size  # shards differ by <= 1
        self.workers = default_workers() if workers is None else int(workers)
        self._sampler = _ShardSampler(self.start, self.stop, batch_size)
        self._loader = None

    def __len__(self) -> int:
        return len(self._sampler)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        if self._loader is None:
            self._loader = _data_loader(_EvalTask(self.dataset, self.size), self._sampler, _collate_eval,
                                        self.workers, self.device.type == "cuda", 4, 0)
        for batch in self._loader:
            _adopt_skips(self.dataset, batch["skips"])
            ids = batch["used"]
            yield (batch["images"].to(self.device, non_blocking=True),
                   self.dataset.labels[ids].to(self.device, non_blocking=True), ids.to(self.device, non_blocking=True))


def eval_batches(dataset: ImageFolderStream, size: int = 224, batch_size: int = 256, world_size: int = 1,
                 rank: int = 0, workers: int | None = None, device="cpu") -> EvalBatches:
    """The whole split in order through `eval_view`, rank r taking images [n*r//W, n*(r+1)//W): uint8 images
    B x 3 x size x size, int64 labels and ids, on `device`. The last batch of a shard may be smaller."""
    return EvalBatches(dataset, size, batch_size, world_size, rank, workers, device)
