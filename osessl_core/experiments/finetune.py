"""Table 4's semi-supervised protocol (OSESSL A.1.2 / SimCLRv2): fine-tune a copy of the evaluated network plus a
new linear head on a labelled fraction of the training set, then measure test top-1/top-5.

One protocol, two data paths: a streamed folder (ImageNet) goes to the core's `eval.semisup.semisup_finetune`
(loader crops, SimCLR's subset files, DDP); a device-resident set (CIFAR, small folders) keeps the loop below,
whose crops are cut on the device from the run's own generator, so its numbers stay what they were. Both share
the protocol's defaults, the labelled split (`labelled_indices`) and the model (`Classifier`) of eval/semisup.py.
"""
from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..eval.semisup import PROTOCOL, Classifier, labelled_indices
from .datasets import is_streamed, normalization
from .probes import eval_network, projector_hidden


def finetune(method, train_set, test_set, fraction: float | None, epochs: int = PROTOCOL["epochs"],
             lr: float = PROTOCOL["lr"], batch_size: int = PROTOCOL["batch_size"],
             momentum: float = PROTOCOL["momentum"], weight_decay: float = PROTOCOL["weight_decay"], seed: int = 0,
             device="cpu", projector_hidden_layers: int = 1, subset_file=None,
             workers: int | None = None) -> dict[str, Any]:
    """Fine-tune a copy of the evaluated encoder plus the first `projector_hidden_layers` hidden layers of its
    projection head (1: "the first layer of the projection head", Linear-BN-ReLU in ReSA; 0: the encoder only) and
    a new linear classifier on `fraction` of the training labels (a seeded class-balanced draw) or, for a streamed
    folder, on the images a SimCLR `subset_file` (1percent.txt / 10percent.txt) names; SGD with a cosine schedule
    over all steps, weak augmentation (random resized crop + flip). Returns test top-1/top-5 (%).

    A streamed `train_set` runs eval.semisup.semisup_finetune (crops at the training set's image_size, the test
    set through the ImageNet test view, bf16 autocast on CUDA, `workers` decoding processes)."""
    head = projector_hidden(method, projector_hidden_layers) if projector_hidden_layers else None
    body = eval_network(method, head)
    if is_streamed(train_set):
        from ..eval.semisup import semisup_finetune
        device = torch.device(device)
        res = semisup_finetune(body, train_set, test_set, fraction=None if subset_file else fraction,
                               subset_file=subset_file, epochs=epochs, lr=lr, batch_size=batch_size,
                               momentum=momentum, weight_decay=weight_decay, size=train_set.image_size, seed=seed,
                               device=device, amp=device.type == "cuda", workers=workers)
        return {"protocol": "imagenet", **res}
    if subset_file is not None:
        raise ValueError("subset files name the images of a streamed folder; a resident set takes a fraction")
    return _finetune_resident(body, train_set, test_set, fraction, epochs, lr, batch_size, momentum, weight_decay,
                              seed, torch.device(device))


def _finetune_resident(body, train_set, test_set, fraction, epochs, lr, batch_size, momentum, weight_decay, seed,
                       device) -> dict[str, Any]:
    from ..data.augment import normalize, weak_view
    idx = labelled_indices(train_set, fraction, seed=seed)
    images, labels = train_set.images[idx].to(device), train_set.labels[idx].to(device)
    body = copy.deepcopy(body).float().to(device).eval()
    with torch.no_grad():  # eval mode: probing the output width must not touch the BN statistics
        out_dim = body(torch.zeros(2, *images.shape[1:], device=device)).shape[1]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        classifier = nn.Linear(out_dim, train_set.num_classes)
    model = Classifier(body, classifier).to(device)
    for p in model.parameters():
        p.requires_grad_(True)
    mean, std = normalization(train_set)
    augment = weak_view(images.shape[-1], mean, std)
    bs = min(batch_size, len(idx))
    steps_per_epoch = max(1, len(idx) // bs)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * steps_per_epoch)
    gen = torch.Generator(device=device).manual_seed(seed)
    order_gen = torch.Generator().manual_seed(seed)
    model.train()
    loss = torch.zeros(())
    for _ in range(epochs):
        perm = torch.randperm(len(idx), generator=order_gen).to(device)
        for s in range(steps_per_epoch):
            b = perm[s * bs:(s + 1) * bs]
            loss = F.cross_entropy(model(augment(images[b], gen)), labels[b])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    model.eval()
    correct1 = correct5 = 0
    with torch.no_grad():
        for start in range(0, len(test_set), 1000):
            x = normalize(test_set.images[start:start + 1000].to(device), mean, std)
            y = test_set.labels[start:start + 1000].to(device)
            top = model(x).topk(min(5, train_set.num_classes), dim=1).indices
            correct1 += (top[:, 0] == y).sum().item()
            correct5 += (top == y[:, None]).any(1).sum().item()
    n = len(test_set)
    return {"protocol": "resident", "fraction": fraction, "n_labelled": len(idx), "epochs": epochs, "lr": lr,
            "batch_size": bs, "top1": 100.0 * correct1 / n, "top5": 100.0 * correct5 / n,
            "final_train_loss": float(loss.detach())}
