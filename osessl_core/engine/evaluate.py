"""Evaluate a trained method with the shared protocol (ReSA CIFAR: the method's eval encoder, eval-mode BN, raw
features)."""
from __future__ import annotations

import time
from typing import Any


from ..data import NORMALIZATION, load_dataset
from ..eval import extract_features, knn_accuracy, linear_probe


def eval_normalization(train_set) -> tuple:
    # ReSA/INTL quirk (docs/decisions.md#d-eval-2): CIFAR-100 features are extracted with the CIFAR-10 mean/std.
    if train_set.name in ("cifar10", "cifar100"):
        return NORMALIZATION["cifar10"]
    return train_set.mean, train_set.std


def evaluate_run(method, cfg, train_set, device, test_set=None) -> dict[str, Any]:
    from ..data.order import seeded_subset
    t0 = time.perf_counter()
    if test_set is None:
        test_set = load_dataset(cfg.dataset, cfg.data_root, "test")
    if cfg.eval_test_subset:
        test_set = test_set.subset(seeded_subset(len(test_set), cfg.eval_test_subset, cfg.seed, "eval_test_subset"))
    mean, std = eval_normalization(train_set)
    encoder = method.eval_encoder()
    # Which network was evaluated, by its attribute name (e.g. "momentum_encoder" for ReSA, "encoder" for SimCLR).
    network = next((name for name, m in method.named_modules() if m is encoder), type(encoder).__name__)
    train_f = extract_features(encoder, train_set.images, mean, std, device=device, progress=cfg.progress)
    test_f = extract_features(encoder, test_set.images, mean, std, device=device, progress=cfg.progress)
    out: dict[str, Any] = {"n_train": len(train_set), "n_test": len(test_set), "features": network.replace("_", " "),
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
