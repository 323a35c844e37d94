"""The ImageNet linear protocol: a linear classifier on a frozen encoder, trained on streamed augmented crops.

OSESSL A.1.2 ("For ImageNet datasets, we also follow the same settings in ReSA. Specifically, we train the
classifier for 100 epochs using SGD with a MultiStepLR scheduler, where the learning rate is decayed by a
factor of 0.1 at the last 40 and 20 epochs. We use a batch size of 256 and set the weight decay to 0 during
training. Differently, the learning rate on ImageNet-1K is set to 5."); ReSA B.3 says the same and gives the
per-setting lr in its Table 9 (ImageNet-100 / ResNet-18 / batch 128: 5; ImageNet / ResNet-50: 10 at batch 256,
40 at 1024; ViT-S/16: 0.03). Neither paper states the momentum, the crops or the head's init: those follow the
MoCo linear-classification recipe this schedule (drops at epochs 60 and 80) comes from -- SGD momentum 0.9,
RandomResizedCrop(224, scale (0.08, 1)) + flip for training, resize 256 + centre crop 224 for testing, and
weights ~ N(0, 0.01), bias 0. The encoder stays in eval mode (BN running statistics) and runs under no_grad.
"""
from __future__ import annotations

import time

import torch
from torch import nn

from .. import distributed as D
from .streaming import autocast, eval_mode, fit_classifier, resolve_ranks, stream_accuracy, wrap_ddp

PROTOCOL = dict(epochs=100, lr=5.0, batch_size=256, momentum=0.9, weight_decay=0.0, gamma=0.1, size=224,
                crop_scale=(0.08, 1.0))


def default_milestones(epochs: int) -> list[int]:
    # "decayed by 0.1 at the last 40 and 20 epochs": epochs 60 and 80 of 100, kept proportional for other lengths.
    return [round(0.6 * epochs), round(0.8 * epochs)]


class FrozenProbe(nn.Module):
    """head(encoder(x)): the encoder under no_grad (and bf16 autocast with amp), the head in float32."""

    def __init__(self, encoder: nn.Module, head: nn.Module, amp: bool = False):
        super().__init__()
        self.encoder, self.head, self.amp = encoder, head, amp

    def features(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad(), autocast(x.device, self.amp):
            return self.encoder(x).flatten(1).float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


@torch.no_grad()
def feature_dim(encoder: nn.Module, size: int, device) -> int:
    with eval_mode(encoder):  # eval mode: probing the width must not touch BN running statistics
        return int(encoder(torch.zeros(2, 3, size, size, device=device)).flatten(1).shape[1])


def imagenet_linear(encoder: nn.Module, train_set, val_set, *, epochs: int = PROTOCOL["epochs"],
                    lr: float = PROTOCOL["lr"], batch_size: int = PROTOCOL["batch_size"],
                    momentum: float = PROTOCOL["momentum"], weight_decay: float = PROTOCOL["weight_decay"],
                    milestones: list[int] | None = None, size: int = PROTOCOL["size"], seed: int = 0,
                    device="cpu", amp: bool = False, checkpoint=None, stop_after_epochs: int | None = None,
                    workers: int | None = None, eval_batch_size: int = 256, progress: bool = False) -> dict:
    """Train nn.Linear(D, C) on the frozen `encoder` (the paper's protocol, see the module docstring); return
    val top-1/top-5 in percent plus the protocol values used.

    batch_size is the global batch: under torchrun each rank takes batch_size / world_size images per step and
    the head is wrapped in DDP (gradients averaged), so any rank count trains on the same global batches.
    checkpoint: a file written after every epoch (head, optimiser, scheduler); rerunning with it resumes.
    The encoder is not modified (no parameter flags are changed; its train/eval flags are restored).
    """
    t0 = time.perf_counter()
    device = torch.device(device)
    w, _ = resolve_ranks(None, None)
    if epochs < 1 or lr <= 0:
        raise ValueError(f"need epochs >= 1 and lr > 0, got {epochs}, {lr}")
    milestones = list(default_milestones(epochs) if milestones is None else milestones)
    dim = feature_dim(encoder, size, device)
    with torch.random.fork_rng(devices=[]):  # seeded init without touching the caller's RNG
        torch.manual_seed(seed)
        head = nn.Linear(dim, train_set.num_classes)
        nn.init.normal_(head.weight, std=0.01)
        nn.init.zeros_(head.bias)
    head.to(device)
    opt = torch.optim.SGD(head.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=milestones, gamma=PROTOCOL["gamma"])
    probe = FrozenProbe(encoder, wrap_ddp(head, device, w), amp)

    from ..data.augment import ViewAugment
    view = ViewAugment("weak", size, train_set.mean, train_set.std, crop_scale=PROTOCOL["crop_scale"])
    spec = {"protocol": "imagenet-linear", "epochs": epochs, "lr": lr, "momentum": momentum,
            "weight_decay": weight_decay, "milestones": ",".join(map(str, milestones)), "size": size, "seed": seed,
            "feature_dim": dim, "num_classes": train_set.num_classes, "n_train": len(train_set)}
    with eval_mode(encoder):
        head.train()
        fit = fit_classifier(probe, head, opt, sched, train_set, view, seed=seed, global_batch=batch_size,
                             epochs=epochs, device=device, step_schedule=False, checkpoint=checkpoint, spec=spec,
                             stop_after_epochs=stop_after_epochs, workers=workers, progress=progress,
                             desc="linear")
    out = {"epochs": epochs, "lr": lr, "batch_size": batch_size, "momentum": momentum,
           "weight_decay": weight_decay, "milestones": milestones, "size": size, "feature_dim": dim,
           "n_train": len(train_set), "n_val": len(val_set), "world_size": w, **fit}
    if fit["complete"]:
        head.eval()
        out.update(stream_accuracy(FrozenProbe(encoder, head, amp), val_set, size=size,
                                   batch_size=max(1, eval_batch_size // w), device=device,
                                   workers=workers, progress=progress))  # amp: the probe autocasts its encoder
    out["seconds"] = time.perf_counter() - t0
    D.barrier()
    return out
