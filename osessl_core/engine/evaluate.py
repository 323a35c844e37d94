"""Evaluate a trained method with the shared protocol (ReSA CIFAR: the method's eval encoder, eval-mode BN, raw
features)."""
from __future__ import annotations

import time
from typing import Any

import torch


from ..data import NORMALIZATION, load_dataset
from ..eval import extract_features, knn_accuracy, linear_probe


def eval_normalization(train_set) -> tuple:
    # ReSA/INTL quirk (docs/decisions.md#d-eval-2): CIFAR-100 features are extracted with the CIFAR-10 mean/std.
    if getattr(train_set, "name", None) in ("cifar10", "cifar100"):  # streamed folders: their own statistics
        return NORMALIZATION["cifar10"]
    return train_set.mean, train_set.std


def evaluated_network(method) -> str:
    """Which network is evaluated, by its attribute name (e.g. "momentum encoder" for ReSA, "encoder" for SimCLR)."""
    encoder = method.eval_encoder()
    name = next((name for name, m in method.named_modules() if m is encoder), type(encoder).__name__)
    return name.replace("_", " ")


def evaluate_run(method, cfg, train_set, device, test_set=None) -> dict[str, Any]:
    if not hasattr(train_set, "images"):
        return evaluate_streamed(method, cfg, train_set, device, test_set)
    from ..data.order import seeded_subset
    t0 = time.perf_counter()
    if test_set is None:
        test_set = load_dataset(cfg.dataset, cfg.data_root, "test")
    if cfg.eval_test_subset:
        test_set = test_set.subset(seeded_subset(len(test_set), cfg.eval_test_subset, cfg.seed, "eval_test_subset"))
    mean, std = eval_normalization(train_set)
    encoder = method.eval_encoder()
    train_f = extract_features(encoder, train_set.images, mean, std, device=device, progress=cfg.progress)
    test_f = extract_features(encoder, test_set.images, mean, std, device=device, progress=cfg.progress)
    out: dict[str, Any] = {"n_train": len(train_set), "n_test": len(test_set), "features": evaluated_network(method),
                           "knn_k": 5}
    if cfg.eval_knn:
        out["knn_top1"] = knn_accuracy(train_f.to(device), train_set.labels.to(device), test_f.to(device),
                                       test_set.labels.to(device), k=5)
    if cfg.eval_linear:
        res = linear_probe(train_f, train_set.labels, test_f, test_set.labels, num_classes=train_set.num_classes,
                           epochs=cfg.linear_epochs, seed=cfg.seed, device=device, progress=cfg.progress)
        out.update({"linear_top1": res["top1"], "linear_top5": res["top5"], "linear_epochs": cfg.linear_epochs})
    out["eval_seconds"] = time.perf_counter() - t0
    return out


def evaluate_streamed(method, cfg, train_set, device, val_set=None) -> dict[str, Any]:
    """The ImageNet protocols on a streamed folder: weighted k-NN (k = 5/10/20, T = 0.07; ReSA B.3, OSESSL
    Table 5) on centre-crop features, and with eval_linear the linear protocol (eval/imagenet_linear.py);
    docs/decisions.md#d-imagenet-5."""
    from ..data.order import seeded_subset
    from ..eval.imagenet_linear import imagenet_linear
    from ..eval.knn import knn_accuracies
    from ..eval.streaming import stream_features
    from ..models import is_vit
    from .batches import open_streamed
    t0 = time.perf_counter()
    if val_set is None:
        val_set = open_streamed(cfg, "val")
    if cfg.eval_test_subset:
        val_set = val_set.subset(seeded_subset(len(val_set), cfg.eval_test_subset, cfg.seed, "eval_test_subset"))
    encoder, size = method.eval_encoder(), train_set.image_size
    out: dict[str, Any] = {"n_train": len(train_set), "n_test": len(val_set), "features": evaluated_network(method),
                           "knn_k": 20, "protocol": "imagenet", "image_size": size}
    amp = torch.device(device).type == "cuda"
    if cfg.eval_knn:
        common = dict(size=size, device=device, amp=amp, workers=cfg.loader_workers, progress=cfg.progress)
        # float16 storage halves the bank (1.28 M x 2048 is 5 GB); similarities are computed in float32
        train_f, train_y = stream_features(encoder, train_set, dtype=torch.float16, **common)
        val_f, val_y = stream_features(encoder, val_set, dtype=torch.float16, **common)
        ks = [k for k in (5, 10, 20) if k <= len(train_f)]
        acc = knn_accuracies(train_f, train_y, val_f, val_y, ks=ks, device=device, num_classes=train_set.num_classes)
        out.update({"knn_top1": acc[max(ks)], "knn_k": max(ks), **{f"knn{k}_top1": v for k, v in acc.items()}})
    if cfg.eval_linear:
        # OSESSL A.1.2: lr 5 (ResNets); ReSA Table 9: 0.03 for ViT-S/16
        lr = 0.03 if is_vit(cfg.arch) else 5.0
        res = imagenet_linear(encoder, train_set, val_set, epochs=cfg.linear_epochs, lr=lr, size=size, seed=cfg.seed,
                              batch_size=min(256, len(train_set)), device=device, amp=amp,
                              workers=cfg.loader_workers, progress=cfg.progress)
        out.update({"linear_top1": res["top1"], "linear_top5": res["top5"], "linear_epochs": cfg.linear_epochs})
    out["eval_seconds"] = time.perf_counter() - t0
    return out


def evaluate_semisup(method, cfg, train_set, device, fraction: float | None, subset_file=None,
                     epochs: int | None = None) -> dict[str, Any]:
    """Semi-supervised fine-tuning of the evaluated encoder plus the projection head's first layer (OSESSL
    A.1.2) on 1 % / 10 % of a streamed folder's labels (SimCLR's subset file if given); top-1/top-5 on val."""
    from ..config import ConfigError
    from ..eval.semisup import PROTOCOL, semisup_finetune
    from ..experiments.probes import eval_network, projector_hidden
    from .batches import open_streamed
    if hasattr(train_set, "images"):
        raise ConfigError("semi-supervised fine-tuning from the CLI is for streamed image folders; for "
                          "device-resident data use experiments.finetune (notebooks/semisup_imagefolder.ipynb)")
    if fraction is not None and not 0 < fraction <= 1:
        raise ConfigError(f"--semisup must be a fraction in (0, 1], got {fraction}")
    body = eval_network(method, projector_hidden(method, 1))
    res = semisup_finetune(body, train_set, open_streamed(cfg, "val"), fraction=fraction, subset_file=subset_file,
                           epochs=epochs or PROTOCOL["epochs"], size=train_set.image_size, seed=cfg.seed,
                           batch_size=min(PROTOCOL["batch_size"], len(train_set)), device=device,
                           amp=torch.device(device).type == "cuda", workers=cfg.loader_workers,
                           progress=cfg.progress)
    return {**res, "fraction": fraction, "subset_file": subset_file, "features": evaluated_network(method)}
