"""k-nearest-neighbour classification of frozen features (ReSA/INTL 5-NN and DINO-style weighted kNN).

Two paths: `knn_classify` with the default train_chunk=None builds one [test chunk, N_train] similarity matrix
(the CIFAR protocol; its results are kept bit-identical). With train_chunk set, and in `knn_accuracies`, the
training features are also chunked and each test row's running top-k is merged chunk by chunk, so ImageNet's
1.28 M x 2048 features never need one similarity matrix (nor a float32 copy of the whole training set).
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

METRICS = ("euclidean", "cosine")
WEIGHTINGS = ("uniform", "exp")


def _check(train_feats, train_labels, test_feats, k, metric, weighting, temperature, chunks) -> None:
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
    if temperature <= 0 or any(c is not None and c < 1 for c in chunks):
        raise ValueError(f"temperature must be > 0 and chunk sizes >= 1, got {temperature}, {chunks}")


@contextlib.contextmanager
def _no_tf32():
    # Training turns TF32 on globally for CUDA (engine/execution.py); its 10-bit mantissa would reorder close
    # neighbours, so the neighbour search runs in true float32 and restores the flag afterwards.
    saved = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = saved


def knn_neighbours(train_feats: torch.Tensor, test_feats: torch.Tensor, k: int, metric: str = "cosine",
                   train_chunk: int = 65536, test_chunk: int = 1024, device=None, with_cosine: bool = False):
    """The k nearest training rows of every test row, best first: (score, index[, cosine]), each [N_test, k].

    score is the cosine similarity (metric "cosine") or the negative Euclidean distance; with_cosine also returns
    the neighbours' cosine similarities (exp weighting of Euclidean neighbours). Features may be stored in half
    precision, on the CPU: each training chunk is moved to `device` (default train_feats'; the test features are
    moved once, in their stored dtype), and similarities are always computed in float32 (TF32 off). The train
    loop is the outer one, so every training row crosses to the device once; memory is O(test_chunk *
    train_chunk) plus the test features and the running [N_test, k] top-k.
    """
    device = torch.device(device) if device is not None else train_feats.device
    with _no_tf32():
        return _neighbours(train_feats, test_feats.to(device), k, metric, train_chunk, test_chunk, device,
                           with_cosine)


def _neighbours(train_feats, test_feats, k, metric, train_chunk, test_chunk, device, with_cosine):
    n_test = len(test_feats)
    best_s = torch.empty(n_test, 0, device=device)
    best_i = torch.empty(n_test, 0, dtype=torch.long, device=device)
    best_c = torch.empty(n_test, 0, device=device) if with_cosine else None
    need_cos = metric == "cosine" or with_cosine
    for t0 in range(0, len(train_feats), train_chunk):
        t = train_feats[t0:t0 + train_chunk].to(device, non_blocking=True).float()
        tn = F.normalize(t, dim=1) if need_cos else None
        kk = min(k, len(t))
        for q0 in range(0, n_test, test_chunk):
            q = test_feats[q0:q0 + test_chunk].to(device, non_blocking=True).float()
            cos = F.normalize(q, dim=1) @ tn.T if need_cos else None
            sim = cos if metric == "cosine" else -torch.cdist(q, t)
            top = sim.topk(kk, dim=1)
            rows = slice(q0, q0 + len(q))
            # Merge this chunk's top-k with the running one; topk keeps the result sorted, best first.
            s = torch.cat([best_s[rows], top.values], 1)
            i = torch.cat([best_i[rows], top.indices + t0], 1)
            keep = s.topk(min(k, s.shape[1]), dim=1).indices
            if q0 == 0:  # the running top-k widens until it holds k neighbours
                width = keep.shape[1]
                new_s = torch.empty(n_test, width, device=device)
                new_i = torch.empty(n_test, width, dtype=torch.long, device=device)
                new_c = torch.empty(n_test, width, device=device) if with_cosine else None
            new_s[rows], new_i[rows] = s.gather(1, keep), i.gather(1, keep)
            if with_cosine:
                new_c[rows] = torch.cat([best_c[rows], cos.gather(1, top.indices)], 1).gather(1, keep)
        if n_test:
            best_s, best_i, best_c = new_s, new_i, new_c
    return (best_s, best_i, best_c) if with_cosine else (best_s, best_i)


def _vote(neighbour_labels: torch.Tensor, sims: torch.Tensor | None, num_classes: int, temperature: float):
    """Predicted label per row from its neighbours (best first); ties go to the smallest label."""
    if sims is None:
        weights = torch.ones(neighbour_labels.shape, device=neighbour_labels.device)
    else:
        # Shifting by the row max leaves the argmax unchanged but keeps exp() finite for tiny temperatures.
        weights = ((sims - sims.max(dim=1, keepdim=True).values) / temperature).exp()
    scores = torch.zeros(len(neighbour_labels), num_classes, device=neighbour_labels.device)
    return scores.scatter_add_(1, neighbour_labels, weights).argmax(dim=1)


def knn_classify(train_feats: torch.Tensor, train_labels: torch.Tensor, test_feats: torch.Tensor, k: int = 5,
                 metric: str = "euclidean", weighting: str = "uniform", temperature: float = 0.07,
                 chunk_size: int = 1000, train_chunk: int | None = None) -> torch.LongTensor:
    """Predict a label for each test row from its k nearest training rows.

    metric picks the neighbours: "euclidean" = torch.cdist on the raw features, "cosine" = dot product of
    L2-normalised features. weighting "uniform" is a plain majority vote, "exp" weights each neighbour by
    exp(cos_sim / temperature). Score ties go to the smallest label (argmax returns the first maximum).
    Runs on train_feats' device, chunked over test rows so memory stays O(chunk_size * N_train); with
    train_chunk, also over training rows (see knn_neighbours), so memory is O(chunk_size * train_chunk).
    """
    _check(train_feats, train_labels, test_feats, k, metric, weighting, temperature, (chunk_size, train_chunk))

    device = train_feats.device
    labels = train_labels.to(device).long()
    num_classes = int(labels.max()) + 1
    if train_chunk is not None:
        out = knn_neighbours(train_feats, test_feats, k, metric, train_chunk, chunk_size, device,
                             with_cosine=metric == "euclidean" and weighting == "exp")
        sims = None if weighting == "uniform" else out[-1] if metric == "euclidean" else out[0]
        return _vote(labels[out[1]], sims, num_classes, temperature)

    train = train_feats.float()  # half-precision distances would reorder close neighbours
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


def knn_accuracies(train_feats: torch.Tensor, train_labels: torch.Tensor, test_feats: torch.Tensor,
                   test_labels: torch.Tensor, ks=(5, 10, 20), metric: str = "cosine", weighting: str = "exp",
                   temperature: float = 0.07, train_chunk: int = 65536, test_chunk: int = 1024, device=None,
                   num_classes: int | None = None) -> dict[int, float]:
    """Top-1 kNN accuracy (percent) for every k in ks, from one neighbour search: {k: accuracy}.

    Defaults are the weighted kNN of ReSA B.3 / OSESSL Table 5 (following Wu et al. 2018 and DINO): cosine
    neighbours, each weighted by exp(cos / 0.07), k = 5, 10, 20 (Table 3 and the ImageNet column use k = 20).
    The top-max(ks) neighbours are found once (train- and test-chunked, see knn_neighbours) and each k votes
    with its first k of them, which is exactly a separate k-NN per k.
    """
    ks = tuple(int(k) for k in ks)
    if not ks:
        raise ValueError("ks is empty")
    if len(test_labels) != len(test_feats):
        raise ValueError(f"test_labels has {len(test_labels)} entries for {len(test_feats)} test features")
    _check(train_feats, train_labels, test_feats, min(ks), metric, weighting, temperature, (train_chunk, test_chunk))
    _check(train_feats, train_labels, test_feats, max(ks), metric, weighting, temperature, ())
    device = torch.device(device) if device is not None else train_feats.device
    labels = train_labels.to(device).long()
    test_y = test_labels.to(device).long()
    if num_classes is None:
        num_classes = int(max(labels.max(), test_y.max() if len(test_y) else 0)) + 1
    out = knn_neighbours(train_feats, test_feats, max(ks), metric, train_chunk, test_chunk, device,
                         with_cosine=metric == "euclidean" and weighting == "exp")
    sims = None if weighting == "uniform" else out[-1] if metric == "euclidean" else out[0]
    neighbour_labels = labels[out[1]]
    result = {}
    for k in ks:
        preds = _vote(neighbour_labels[:, :k], None if sims is None else sims[:, :k], num_classes, temperature)
        result[k] = 100.0 * int((preds == test_y).sum()) / len(test_y) if len(test_y) else float("nan")
    return result
