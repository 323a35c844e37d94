"""k-nearest-neighbour classification of frozen features (ReSA/INTL 5-NN and DINO-style weighted kNN)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

METRICS = ("euclidean", "cosine")
WEIGHTINGS = ("uniform", "exp")


def knn_classify(train_feats: torch.Tensor, train_labels: torch.Tensor, test_feats: torch.Tensor, k: int = 5,
                 metric: str = "euclidean", weighting: str = "uniform", temperature: float = 0.07,
                 chunk_size: int = 1000) -> torch.LongTensor:
    """Predict a label for each test row from its k nearest training rows.

    metric picks the neighbours: "euclidean" = torch.cdist on the raw features, "cosine" = dot product of
    L2-normalised features. weighting "uniform" is a plain majority vote, "exp" weights each neighbour by
    exp(cos_sim / temperature). Score ties go to the smallest label (argmax returns the first maximum).
    Runs on train_feats' device, chunked over test rows so memory stays O(chunk_size * N_train).
    """
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")
    if train_feats.dim() != 2 or test_feats.dim() != 2 or train_feats.shape[1] != test_feats.shape[1]:
        raise ValueError(f"features must be [N, D] with equal D, got {tuple(train_feats.shape)} and {tuple(test_feats.shape)}")
    if len(train_labels) != len(train_feats):
        raise ValueError(f"train_labels has {len(train_labels)} entries for {len(train_feats)} train features")
    if not 1 <= k <= len(train_feats):
        raise ValueError(f"k must be in [1, {len(train_feats)}], got {k}")
    if temperature <= 0 or chunk_size < 1:
        raise ValueError(f"temperature must be > 0 and chunk_size >= 1, got {temperature}, {chunk_size}")

    device = train_feats.device
    train = train_feats.float()  # half-precision distances would reorder close neighbours
    labels = train_labels.to(device).long()
    num_classes = int(labels.max()) + 1
    need_cos = metric == "cosine" or weighting == "exp"
    train_n = F.normalize(train, dim=1) if need_cos else None

    preds = []
    for start in range(0, len(test_feats), chunk_size):
        q = test_feats[start:start + chunk_size].to(device).float()
        cos = F.normalize(q, dim=1) @ train_n.T if need_cos else None
        if metric == "euclidean":
            idx = torch.cdist(q, train).topk(k, dim=1, largest=False).indices
        else:
            idx = cos.topk(k, dim=1).indices
        if weighting == "uniform":
            weights = torch.ones(idx.shape, device=device)
        else:
            sims = cos.gather(1, idx)
            # Shifting by the row max leaves the argmax unchanged but keeps exp() finite for tiny temperatures.
            weights = ((sims - sims.max(dim=1, keepdim=True).values) / temperature).exp()
        scores = torch.zeros(len(q), num_classes, device=device).scatter_add_(1, labels[idx], weights)
        preds.append(scores.argmax(dim=1))
    return torch.cat(preds) if preds else torch.empty(0, dtype=torch.long, device=device)


def knn_accuracy(train_feats, train_labels, test_feats, test_labels, **kw) -> float:
    """Top-1 kNN accuracy in percent; kw are passed to knn_classify."""
    if len(test_labels) != len(test_feats):
        raise ValueError(f"test_labels has {len(test_labels)} entries for {len(test_feats)} test features")
    preds = knn_classify(train_feats, train_labels, test_feats, **kw)
    return (preds == test_labels.to(preds.device)).float().mean().item() * 100.0
