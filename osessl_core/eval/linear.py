"""Linear probe on cached (frozen) features, following the ReSA CIFAR protocol."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm


def make_probe_optimizer(params, epochs: int, lr: float = 1e-2, final_lr: float = 1e-6, weight_decay: float = 5e-6):
    """Adam + ExponentialLR whose gamma takes the LR from lr to final_lr in `epochs` per-epoch steps."""
    if epochs < 1 or lr <= 0 or final_lr <= 0:
        raise ValueError(f"need epochs >= 1 and lr, final_lr > 0, got {epochs}, {lr}, {final_lr}")
    opt = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=(final_lr / lr) ** (1.0 / epochs))
    return opt, sched


@torch.no_grad()
def _topk_correct(model: nn.Module, feats: torch.Tensor, labels: torch.Tensor, ks, batch_size: int, device):
    correct = torch.zeros(len(ks), dtype=torch.long)
    for start in range(0, len(feats), batch_size):
        x = feats[start:start + batch_size].to(device).float()
        y = labels[start:start + batch_size].to(device).long()
        top = model(x).topk(max(ks), dim=1).indices
        hits = top == y[:, None]
        for i, k in enumerate(ks):
            correct[i] += hits[:, :k].any(dim=1).sum().cpu()
    return correct


def linear_probe(train_feats: torch.Tensor, train_labels: torch.Tensor, test_feats: torch.Tensor,
                 test_labels: torch.Tensor, num_classes: int | None = None, epochs: int = 500, lr: float = 1e-2,
                 final_lr: float = 1e-6, weight_decay: float = 5e-6, batch_size: int = 1000, seed: int = 0,
                 device=None, progress: bool = False) -> dict:
    """Train nn.Linear(D, C) with Adam + cross-entropy on raw features; return test top-1/top-5 in percent.

    Deterministic for a seed: the layer is initialised under a forked, seeded RNG (the caller's global RNG
    is untouched) and each epoch's shuffle comes from a dedicated seeded CPU generator.
    device defaults to CUDA when available (the probe is 500 epochs), else the features' device.
    """
    if len(train_feats) != len(train_labels) or len(test_feats) != len(test_labels):
        raise ValueError("features and labels must have matching lengths")
    if train_feats.dim() != 2 or test_feats.dim() != 2 or train_feats.shape[1] != test_feats.shape[1]:
        raise ValueError(f"features must be [N, D] with equal D, got {tuple(train_feats.shape)} and {tuple(test_feats.shape)}")
    if batch_size < 1 or len(train_feats) == 0:
        raise ValueError(f"need batch_size >= 1 and non-empty training data, got {batch_size}, N={len(train_feats)}")
    if device is None:
        device = "cuda" if torch.cuda.is_available() else train_feats.device
    device = torch.device(device)
    if num_classes is None:
        num_classes = int(max(train_labels.max(), test_labels.max())) + 1

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = nn.Linear(train_feats.shape[1], num_classes)  # PyTorch default init, on CPU for reproducibility
    model.to(device)
    opt, sched = make_probe_optimizer(model.parameters(), epochs, lr, final_lr, weight_decay)

    x_train = train_feats.to(device).float()
    y_train = train_labels.to(device).long()
    gen = torch.Generator().manual_seed(seed)
    bar = tqdm(range(epochs), desc="linear probe", disable=not progress)
    for _ in bar:
        perm = torch.randperm(len(x_train), generator=gen).to(device)
        for start in range(0, len(perm), batch_size):
            idx = perm[start:start + batch_size]
            loss = F.cross_entropy(model(x_train[idx]), y_train[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        sched.step()
        if progress:
            bar.set_postfix(loss=f"{loss.item():.4f}", lr=f"{sched.get_last_lr()[0]:.2e}")

    ks = (1, min(5, num_classes))
    model.eval()
    correct = _topk_correct(model, test_feats, test_labels, ks, batch_size, device)
    top1, top5 = (100.0 * correct / max(len(test_feats), 1)).tolist()
    return {"top1": top1, "top5": top5, "epochs": epochs}
