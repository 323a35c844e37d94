"""The labelled splits: OSESSL's one-shot (k-shot) exemplars, and class-balanced fractions for semi-supervised use."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from ..files import atomic_write_json
from .datasets import DatasetError


def select_exemplars(labels: torch.Tensor, num_classes: int | None = None, shots: int = 1,
                     seed: int = 0) -> torch.Tensor:
    """LongTensor [num_classes*shots] of dataset indices: class 0's shots, then class 1's, ...

    Each class draws a random permutation of its images from one generator seeded with `seed` and keeps the
    first `shots`, so for a given seed the 1-shot exemplars are the first of the 5-shot ones. The draw depends on
    torch's randperm; save the result with save_exemplars to pin it across torch versions.
    """
    labels = torch.as_tensor(labels)
    if labels.dim() != 1 or labels.numel() == 0 or labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise DatasetError(f"labels must be a non-empty 1-D integer tensor, got {labels.dtype} {tuple(labels.shape)}")
    if shots < 1:
        raise DatasetError(f"shots must be >= 1, got {shots}")
    labels = labels.long()
    if labels.min() < 0:
        raise DatasetError(f"labels must be >= 0, got {int(labels.min())}")
    seen = int(labels.max()) + 1
    if num_classes is None:
        num_classes = seen
    elif num_classes < seen:
        raise DatasetError(f"num_classes={num_classes} but the labels go up to {seen - 1}")
    counts = torch.bincount(labels, minlength=num_classes)
    short = (counts < shots).nonzero().flatten().tolist()
    if short:
        c = short[0]
        raise DatasetError(f"class {c} has {int(counts[c])} images, fewer than shots={shots} "
                           f"({len(short)} such classes; num_classes={num_classes})")
    generator = torch.Generator().manual_seed(seed)
    picks = []
    for c in range(num_classes):
        members = (labels == c).nonzero().flatten()
        picks.append(members[torch.randperm(len(members), generator=generator)[:shots]])
    return torch.cat(picks)


def save_exemplars(path: str | Path, indices, labels, classes: list[str], seed: int, shots: int,
                   dataset: str | None = None, subset: int | None = None) -> None:
    """Write the chosen exemplars as JSON (atomically), in the format of a run directory's exemplars.json.

    `labels` are the whole dataset's labels, as given to select_exemplars, and `classes` its class names. The file
    holds the trainer's keys: exemplar_indices, shots, labels and classes (each exemplar's label and class name),
    seed, dataset and subset."""
    indices = torch.as_tensor(indices).long().flatten()
    labels = torch.as_tensor(labels).long().flatten()
    if len(indices) and int(indices.max()) >= len(labels):
        raise DatasetError(f"exemplar index {int(indices.max())} is out of range for {len(labels)} labels; "
                           "pass the full dataset labels")
    chosen = labels[indices].tolist()
    atomic_write_json(Path(path), {"exemplar_indices": indices.tolist(), "shots": shots, "labels": chosen,
                                   "classes": [classes[c] for c in chosen], "seed": seed, "dataset": dataset,
                                   "subset": subset})


def load_exemplars(path: str | Path) -> torch.Tensor:
    """The exemplar indices of an exemplars.json (a run directory's, or save_exemplars'), as a LongTensor in the
    saved order. Files written before the format was unified, with the key "indices", are read too."""
    try:
        record = json.loads(Path(path).read_text())
        indices = record["exemplar_indices"] if "exemplar_indices" in record else record["indices"]
        if not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in indices):
            raise ValueError("indices must be non-negative ints")
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DatasetError(f"cannot read exemplars from {path} ({type(e).__name__}: {e}); "
                           "write it with save_exemplars") from e
    return torch.tensor(indices, dtype=torch.int64)


def labelled_fraction(labels: torch.Tensor, fraction: float, seed: int = 0) -> torch.Tensor:
    """A class-balanced labelled split (semi-supervised protocols, CMSF-semi): round(fraction * n_c) random images of
    each class c, at least one, from a generator seeded with `seed`; sorted dataset indices."""
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    g = torch.Generator().manual_seed(seed)
    picks = []
    for c in labels.unique().tolist():
        members = (labels == c).nonzero().flatten()
        n = max(1, round(fraction * len(members)))
        picks.append(members[torch.randperm(len(members), generator=g)[:n]])
    return torch.cat(picks).sort().values
