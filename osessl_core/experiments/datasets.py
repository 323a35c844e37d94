"""The images and labels a notebook works on, through the core's loaders: whole splits, a run's own (sub)set,
its normalisation and exemplars, random pools and coarser labellings of the same images.

Two kinds of dataset come back: a device-resident `ImageDataset` (CIFAR, small-image folders: uint8 `.images`)
or a streamed image folder (ImageNet-size folders, engine.batches.streams: `read(i)`, `labels`, `classes`,
`files`, `image_size`, no `.images`). `images(ds, indices)` gives uint8 pixels of either kind."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch

from ..config import TrainConfig
from .paths import resolve_path

# Table 14 stand-in for smoke runs without CIFAR-100: CIFAR-10's 10 classes vs two coarse groups.
CIFAR10_STAND_IN_GROUPS = {"vehicle": ["airplane", "automobile", "ship", "truck"],
                           "animal": ["bird", "cat", "deer", "dog", "frog", "horse"]}


def dataset(name: str, root: str | Path, split: str = "train", image_size: int | None = None):
    """One split of a dataset (the core's load_dataset: decoded once, then cached)."""
    from ..data import load_dataset
    return load_dataset(name, root, split, image_size=image_size)


def dataset_available(name: str, root: str | Path) -> tuple[bool, str]:
    """(True, source) if `name` can be loaded from `root` without a download, else (False, why)."""
    from ..config import TrainConfig
    from ..data import DatasetError, load_dataset
    from ..engine.batches import open_streamed, streams
    try:
        cfg = TrainConfig(dataset=name, data_root=str(root))
        if streams(cfg):  # only the file list is read (the folder is decoded per batch while training)
            return True, str(open_streamed(cfg, "val").root)
        return True, load_dataset(name, root, "test", download=False).source
    except (DatasetError, OSError) as e:
        return False, str(e)


def is_streamed(ds) -> bool:
    """True for a streamed image folder (decoded per batch, no `.images`), False for a resident ImageDataset."""
    return not hasattr(ds, "images")


def split_of(cfg: TrainConfig, split: str = "train"):
    """The whole `split` of cfg's dataset (no `subset`): streamed when cfg streams (ImageNet sets, folders of
    images > 64 px, `stream=True`; its "test" is the folder's val/ when there is no test/), else decoded and
    held, resized on load to cfg.image_size if set."""
    from ..engine.batches import open_streamed, streams
    if streams(cfg):
        return open_streamed(cfg, split)
    return dataset(cfg.dataset, cfg.data_root, "test" if split == "val" else split, image_size=cfg.image_size)


def training_resolution(cfg: TrainConfig) -> int:
    """The side of the views a run of `cfg` trains on: cfg.image_size, else 224 for a streamed folder, else the
    held images' own size."""
    from ..engine.batches import streams
    if cfg.image_size:
        return int(cfg.image_size)
    return 224 if streams(cfg) else int(split_of(cfg, "test").images.shape[-1])


def train_data(cfg: TrainConfig):
    """The training (sub)set a run of `cfg` trains on: the images its exemplar and pool indices refer to."""
    from ..engine.trainer import load_train_data
    return load_train_data(cfg)


def steps_per_epoch(cfg: TrainConfig) -> int:
    from ..data.order import BatchPlan
    return BatchPlan(len(train_data(cfg)), cfg.batch_size).steps_per_epoch  # a notebook run is one process


def normalization(train_set) -> tuple:
    """(mean, std) the core's evaluation extracts features with for a model trained on `train_set` (a streamed
    folder: its own, ImageNet's statistics)."""
    from ..engine.evaluate import eval_normalization
    if is_streamed(train_set):
        return tuple(train_set.mean), tuple(train_set.std)
    return eval_normalization(train_set)


def images(ds, indices, size: int | None = None, workers: int | None = 0) -> torch.Tensor:
    """uint8 images of `ds` at `indices` (any shape, e.g. [C, k]): shape indices.shape + (3, S, S).

    A resident set gives its own images (resized to size x size if `size` differs from theirs); a streamed folder
    decodes them through the ImageNet test view (eval_view: shorter side to round(S * 256 / 224), centre crop),
    S = size or the folder's image_size, in `workers` loader processes (0: this one; None: min(8, CPU cores))."""
    idx = torch.as_tensor(indices, dtype=torch.long)
    if not is_streamed(ds):
        out = ds.images[idx.flatten()]
        if size is not None and tuple(out.shape[-2:]) != (size, size):
            from torchvision.transforms.v2 import functional as TF
            out = TF.resize(out, [size, size], antialias=True)
    else:
        from ..data.loader import eval_batches
        size = size or ds.image_size
        out = torch.zeros(0, 3, size, size, dtype=torch.uint8)
        if idx.numel():
            out = torch.cat([b[0].cpu() for b in eval_batches(ds.subset(idx.flatten()), size=size, workers=workers)])
    return out.reshape(*idx.shape, *out.shape[1:])


def exemplar_indices(run_dir: str | Path) -> torch.Tensor:
    """The labelled exemplars of a run (indices into its train_data), from the run directory's exemplars.json."""
    from ..data import load_exemplars
    return load_exemplars(resolve_path(run_dir) / "exemplars.json")


def run_evaluation(run_dir: str | Path) -> dict:
    """The evaluation a run directory holds (its eval.json, written when the training finished), or {}."""
    import json
    path = resolve_path(run_dir) / "eval.json"
    return json.loads(path.read_text()) if path.exists() else {}


def random_pool(n_total: int, size: int, exclude=(), seed: int = 0) -> torch.Tensor:
    """`size` seeded random indices of range(n_total), none of them in `exclude` (e.g. the exemplars)."""
    keep = torch.ones(n_total, dtype=torch.bool)
    keep[torch.as_tensor(list(exclude), dtype=torch.long)] = False
    candidates = keep.nonzero().flatten()
    perm = torch.randperm(len(candidates), generator=torch.Generator().manual_seed(seed))
    return candidates[perm[:size]].sort().values


def relabel(ds, labels: torch.Tensor, classes: list[str]):
    """The same images under another labelling (e.g. CIFAR-100's 20 coarse classes)."""
    return replace(ds, labels=torch.as_tensor(labels).long(), classes=list(classes))


def coarse_view(ds, groups: dict[str, list[str]] | None = None):
    """`ds` relabelled with its coarse classes: CIFAR-100's own 20 superclasses, or `groups` of class names."""
    if groups is None:
        if ds.coarse_labels is None:
            raise ValueError(f"{ds.name} has no coarse labels; pass groups={{coarse: [fine class, ...]}}")
        return relabel(ds, ds.coarse_labels, ds.coarse_classes)
    names = sorted(groups)
    of_class = {c: names.index(g) for g, members in groups.items() for c in members}
    missing = sorted(set(ds.classes) - set(of_class))
    if missing:
        raise ValueError(f"classes {missing} are in no group")
    lookup = torch.tensor([of_class[c] for c in ds.classes])
    return relabel(ds, lookup[ds.labels], names)
