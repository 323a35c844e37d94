"""Semi-supervised ImageNet evaluation: fine-tune the encoder and a linear classifier on 1 % / 10 % of the labels.

OSESSL A.1.2: "we fine-tune the pretrained encoder together with a linear classifier from the first layer of the
projection head using only 1% or 10% of the labeled data. Specifically, we optimize the model for 30 epochs
using SGD with a learning rate of 0.01, a batch size of 256, and a cosine decay schedule." (ReSA B.3 instead
uses 20 epochs with lr 0.0002 for the encoder and 40 for the classifier; OSESSL is the paper reproduced here.)
Not stated, as in experiments.finetune: SGD momentum 0.9, weight decay 0, the cosine decay stepped per step to 0,
and the crops, which follow SimCLR's fine-tuning (RandomResizedCrop + flip, scale (0.08, 1); val: resize +
centre crop 224). The labelled split is SimCLR's (Chen et al. 2020, as ReSA says) when its 1percent.txt /
10percent.txt is given, else a seeded class-balanced draw (see `labelled_indices`).

`semisup_finetune` is the streamed twin of experiments.finetune (same protocol, same defaults, the same
labelled_fraction split); it takes the network to fine-tune (e.g. experiments.eval_network(method, experiments.projector_hidden(method, 1)):
the momentum encoder + the projector's first Linear-BN-ReLU) instead of a method.
"""
from __future__ import annotations

import copy
import time
from pathlib import Path

import torch
from torch import nn

from .. import distributed as D
from ..data.datasets import DatasetError
from .imagenet_linear import feature_dim
from .streaming import autocast, fit_classifier, resolve_ranks, stream_accuracy, wrap_ddp

PROTOCOL = dict(epochs=30, lr=0.01, batch_size=256, momentum=0.9, weight_decay=0.0, size=224,
                crop_scale=(0.08, 1.0))


def _file_name(f) -> str:
    return str(f).replace("\\", "/").rsplit("/", 1)[-1]


def read_subset_file(path, dataset) -> torch.Tensor:
    """Sorted dataset indices of the images a SimCLR subset file names (one file name per line, e.g.
    n01440764_10026.JPEG), matched by file name against dataset.files; unknown names are an error."""
    path = Path(path)
    try:
        names = list(dict.fromkeys(line.strip() for line in path.read_text().splitlines() if line.strip()))
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetError(f"cannot read subset file {path}: {e}") from e
    if not names:
        raise DatasetError(f"subset file {path} lists no images")
    index: dict[str, int] = {}
    repeated = set()
    for i, f in enumerate(dataset.files):
        name = _file_name(f)
        if name in index:
            repeated.add(name)
        index.setdefault(name, i)
    unknown = [n for n in names if _file_name(n) not in index]
    if unknown:
        raise DatasetError(f"{len(unknown)} of the {len(names)} images in {path} are not in the training set, "
                           f"e.g. {', '.join(unknown[:3])}")
    ambiguous = [n for n in names if _file_name(n) in repeated]
    if ambiguous:
        raise DatasetError(f"{len(ambiguous)} names in {path} match several training files, e.g. "
                           f"{', '.join(ambiguous[:3])}")
    return torch.tensor(sorted(index[_file_name(n)] for n in names), dtype=torch.long)


def labelled_indices(train_set, fraction: float | None = None, subset_file=None, seed: int = 0) -> torch.Tensor:
    """The labelled images: those `subset_file` names (SimCLR's standard splits), else the seeded class-balanced
    draw of data.exemplars.labelled_fraction: round(fraction * n_c) images of each class c (at least one), so 1 %
    of ImageNet is ~12.8 k images like SimCLR's 12,811, but a different set for every seed."""
    if (fraction is None) == (subset_file is None):
        raise ValueError("give exactly one of fraction and subset_file")
    if subset_file is not None:
        return read_subset_file(subset_file, train_set)
    from ..data.exemplars import labelled_fraction
    return labelled_fraction(torch.as_tensor(train_set.labels), fraction, seed)


class Classifier(nn.Module):
    """head(body(x)), body under bf16 autocast with amp, head in float32; everything trains."""

    def __init__(self, body: nn.Module, head: nn.Module, amp: bool = False):
        super().__init__()
        self.body, self.head, self.amp = body, head, amp

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with autocast(x.device, self.amp):
            f = self.body(x)
        return self.head(f.flatten(1).float())


def semisup_finetune(body: nn.Module, train_set, val_set, fraction: float | None = None, subset_file=None, *,
                     epochs: int = PROTOCOL["epochs"], lr: float = PROTOCOL["lr"],
                     batch_size: int = PROTOCOL["batch_size"], momentum: float = PROTOCOL["momentum"],
                     weight_decay: float = PROTOCOL["weight_decay"], size: int = PROTOCOL["size"],
                     crop_scale=PROTOCOL["crop_scale"], seed: int = 0, device="cpu", amp: bool = False,
                     checkpoint=None, stop_after_epochs: int | None = None, workers: int | None = None,
                     eval_batch_size: int = 256, progress: bool = False) -> dict:
    """Fine-tune a copy of `body` plus a new nn.Linear head on the labelled images; return val top-1/top-5 (%).

    batch_size is the global batch, capped at the number of labelled images (like experiments.finetune);
    under torchrun each rank takes an equal share, the model is wrapped in DDP and, on CUDA, its BatchNorms
    become SyncBatchNorm so BN sees the global batch, as on one device. Without SyncBN (gloo/CPU) the ranks'
    BN running statistics are averaged before evaluation. checkpoint / stop_after_epochs: as imagenet_linear.
    """
    t0 = time.perf_counter()
    device = torch.device(device)
    w, _ = resolve_ranks(None, None)
    if epochs < 1 or lr <= 0:
        raise ValueError(f"need epochs >= 1 and lr > 0, got {epochs}, {lr}")
    idx = labelled_indices(train_set, fraction, subset_file, seed)
    labelled = train_set.subset(idx)
    # Cap like experiments.finetune, rounded down to a multiple of the ranks so every rank gets an equal share.
    bs = max(w, min(batch_size, len(idx)) // w * w)

    body = copy.deepcopy(body).float().to(device)
    dim = feature_dim(body, size, device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        head = nn.Linear(dim, train_set.num_classes)  # PyTorch default init, as experiments.finetune
    model = Classifier(body, head, amp).to(device)
    for p in model.parameters():
        p.requires_grad_(True)  # eval encoders (momentum networks) come with gradients switched off
    sync_bn = w > 1 and D.is_distributed() and device.type == "cuda"
    if sync_bn:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    steps = len(idx) // bs
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * steps)

    from ..data.augment import ViewAugment
    view = ViewAugment("weak", size, train_set.mean, train_set.std, crop_scale=tuple(crop_scale))
    spec = {"protocol": "semisup", "epochs": epochs, "lr": lr, "momentum": momentum, "weight_decay": weight_decay,
            "size": size, "crop_scale": ",".join(map(str, crop_scale)), "seed": seed, "feature_dim": dim,
            "num_classes": train_set.num_classes, "n_labelled": len(idx), "labelled_sum": int(idx.sum()),
            "subset_file": None if subset_file is None else Path(subset_file).name,
            "fraction": None if fraction is None else float(fraction)}
    model.train()
    fit = fit_classifier(wrap_ddp(model, device, w), model, opt, sched, labelled, view, seed=seed, global_batch=bs,
                         epochs=epochs, device=device, step_schedule=True, checkpoint=checkpoint, spec=spec,
                         stop_after_epochs=stop_after_epochs, workers=workers, progress=progress, desc="fine-tune")
    if w > 1 and D.is_distributed() and not sync_bn:
        for b in model.buffers():  # each rank's BN statistics saw its own shard: evaluate their mean
            if b.is_floating_point():
                D.all_reduce_(b).div_(w)
    out = {"fraction": fraction, "subset_file": None if subset_file is None else str(subset_file),
           "n_labelled": len(idx), "epochs": epochs, "lr": lr, "batch_size": bs, "momentum": momentum,
           "weight_decay": weight_decay, "size": size, "n_val": len(val_set), "world_size": w, **fit}
    out["final_train_loss"] = fit["train_loss"]
    if fit["complete"]:
        out.update(stream_accuracy(model, val_set, size=size, batch_size=max(1, eval_batch_size // w),
                                   device=device, workers=workers, progress=progress))
    out["seconds"] = time.perf_counter() - t0
    D.barrier()
    return out
