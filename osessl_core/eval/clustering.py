"""Cluster-quality metrics of frozen features: silhouette w.r.t. true labels and k-means ARI."""
from __future__ import annotations

import numpy as np
import torch


def _to_numpy(a) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        a = a.detach().cpu()
        a = a.float() if a.is_floating_point() else a
        return a.numpy()
    return np.asarray(a)


def clustering_metrics(features, labels, seed: int = 0, n_init: int = 10, max_samples: int | None = None) -> dict:
    """Silhouette (Euclidean, raw features, true labels as clusters) and ARI of k-means vs the true labels.

    max_samples draws a seeded random subsample first, because silhouette is O(N^2) in time and memory.
    """
    # sklearn is imported here so that importing osessl_core.eval (e.g. from training code) stays cheap.
    from sklearn.cluster import KMeans
    from sklearn.metrics import adjusted_rand_score, silhouette_samples

    X = _to_numpy(features)
    y = _to_numpy(labels).ravel()
    if X.ndim != 2 or len(X) != len(y):
        raise ValueError(f"features must be [N, D] with N labels, got {X.shape} and {y.shape}")
    if max_samples is not None and len(X) > max_samples:
        idx = np.sort(np.random.default_rng(seed).choice(len(X), size=max_samples, replace=False))
        X, y = X[idx], y[idx]
    n_clusters = len(np.unique(y))
    if not 2 <= n_clusters < len(X):
        raise ValueError(f"need 2 <= number of distinct labels < number of samples, got {n_clusters} and {len(X)}")

    sil = silhouette_samples(X, y, metric="euclidean")
    pred = KMeans(n_clusters=n_clusters, random_state=seed, n_init=n_init).fit_predict(X)
    return {
        "silhouette_mean": float(sil.mean()),
        "silhouette_std": float(sil.std()),
        "ari": float(adjusted_rand_score(y, pred)),
    }
