"""Tests for osessl_core.eval (CPU, small synthetic data)."""
import math
import warnings

import numpy as np
import pytest
import torch
from threadpoolctl import threadpool_limits
from torch import nn

from osessl_core.eval import (clustering_metrics, embed_2d, extract_features, knn_accuracy, knn_classify,
                              linear_probe, make_probe_optimizer, plot_embeddings)


@pytest.fixture(autouse=True, scope="module")
def _single_threaded_native_libs():
    # On a busy 2-core runner, spinning OpenMP/BLAS threads (t-SNE, k-means) oversubscribe the CPU and a
    # 0.2 s t-SNE can take 10+ s. Results are identical for any thread count, so pin to one thread.
    with threadpool_limits(1):
        yield


# ---------------------------------------------------------------- kNN: literal reference loops
def _slow_knn(train, train_y, test, k, metric, weighting="uniform", temperature=0.07):
    train, test = train.double().tolist(), test.double().tolist()
    train_y = train_y.tolist()

    def cos(a, b):
        return sum(x * y for x, y in zip(a, b)) / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))

    preds = []
    for q in test:
        if metric == "euclidean":
            order = sorted(range(len(train)), key=lambda i: math.dist(q, train[i]))
        else:
            order = sorted(range(len(train)), key=lambda i: -cos(q, train[i]))
        scores = {}
        for i in order[:k]:
            w = 1.0 if weighting == "uniform" else math.exp(cos(q, train[i]) / temperature)
            scores[train_y[i]] = scores.get(train_y[i], 0.0) + w
        best = max(scores.values())
        preds.append(min(c for c, s in scores.items() if s == best))  # tie -> smallest label
    return torch.tensor(preds)


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
@pytest.mark.parametrize("k", [1, 4, 5, 10])
def test_knn_uniform_matches_literal_loop(metric, k):
    g = torch.Generator().manual_seed(k)
    train, test = torch.randn(120, 8, generator=g), torch.randn(40, 8, generator=g)
    train_y = torch.randint(0, 4, (120,), generator=g)
    pred = knn_classify(train, train_y, test, k=k, metric=metric, chunk_size=7)
    assert pred.dtype == torch.long and pred.shape == (40,)
    assert torch.equal(pred, _slow_knn(train, train_y, test, k, metric))


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_knn_vote_ties_go_to_smallest_label(metric):
    # Neighbours at distinct, well separated positions along one direction: with k=4 the two closest
    # are label 3 and the next two label 1 -> 2:2 tie -> 1. With k=5 labels 3,3,1,1,0 -> tie 3 vs 1 -> 1.
    direction = torch.tensor([1.0, 0.0, 0.0])
    angles = torch.tensor([0.1, 0.2, 0.3, 0.4, 0.5, 1.5])  # cosine order == euclidean order on the unit circle
    train = torch.stack([torch.cos(angles), torch.sin(angles), torch.zeros(6)], dim=1)
    train_y = torch.tensor([3, 3, 1, 1, 0, 2])
    test = direction[None]
    for k, expected in [(4, 1), (5, 1), (6, 1), (1, 3)]:
        assert knn_classify(train, train_y, test, k=k, metric=metric).item() == expected
        assert _slow_knn(train, train_y, test, k, metric).item() == expected
    # Random ties: 2 classes, even k -> many 2:2 ties, all must resolve like the reference.
    g = torch.Generator().manual_seed(0)
    tr, te = torch.randn(60, 5, generator=g), torch.randn(50, 5, generator=g)
    tr_y = torch.randint(0, 2, (60,), generator=g) * 3  # labels {0, 3}: gaps in the label range are fine
    pred = knn_classify(tr, tr_y, te, k=4, metric=metric)
    assert torch.equal(pred, _slow_knn(tr, tr_y, te, 4, metric))


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_knn_exp_weighting_matches_literal_loop(metric):
    g = torch.Generator().manual_seed(1)
    train, test = torch.randn(150, 6, generator=g), torch.randn(40, 6, generator=g)
    train_y = torch.randint(0, 5, (150,), generator=g)
    for temp in (0.07, 0.5):
        pred = knn_classify(train, train_y, test, k=20, metric=metric, weighting="exp", temperature=temp)
        assert torch.equal(pred, _slow_knn(train, train_y, test, 20, metric, "exp", temp))


def test_knn_chunking_and_accuracy():
    g = torch.Generator().manual_seed(2)
    train, test = torch.randn(300, 16, generator=g), torch.randn(101, 16, generator=g)
    train_y, test_y = torch.randint(0, 10, (300,), generator=g), torch.randint(0, 10, (101,), generator=g)
    for kw in ({"metric": "euclidean"}, {"metric": "cosine", "weighting": "exp", "k": 50}):
        full = knn_classify(train, train_y, test, chunk_size=1000, **kw)
        for cs in (1, 10, 100):
            assert torch.equal(knn_classify(train, train_y, test, chunk_size=cs, **kw), full)
    acc = knn_accuracy(train, train_y, test, test_y, k=5)
    expected = (knn_classify(train, train_y, test, k=5) == test_y).float().mean().item() * 100
    assert acc == pytest.approx(expected)
    assert knn_accuracy(train, train_y, train, train_y, k=1) == 100.0  # each point is its own neighbour


def test_knn_validation():
    x, y = torch.randn(10, 3), torch.zeros(10, dtype=torch.long)
    for kw in ({"k": 0}, {"k": 11}, {"metric": "l1"}, {"weighting": "linear"}):
        with pytest.raises(ValueError):
            knn_classify(x, y, x, **kw)
    with pytest.raises(ValueError):
        knn_classify(x, y[:5], x)
    with pytest.raises(ValueError):
        knn_classify(x, y, torch.randn(4, 5))


# ---------------------------------------------------------------- linear probe
def _blobs(n_per_class=60, dim=32, num_classes=3, sep=6.0, seed=0, noise_seed=None):
    """Gaussian blobs; centres depend on seed only, so noise_seed draws fresh points around the same centres."""
    centers = torch.randn(num_classes, dim, generator=torch.Generator().manual_seed(seed)) * sep
    y = torch.arange(num_classes).repeat_interleave(n_per_class)
    g = torch.Generator().manual_seed(seed if noise_seed is None else noise_seed)
    return centers[y] + torch.randn(len(y), dim, generator=g), y


def test_linear_probe_separable_and_deterministic():
    x, y = _blobs(seed=0)
    xt, yt = _blobs(n_per_class=30, seed=0, noise_seed=1)  # held-out points around the same centres
    state = torch.get_rng_state()
    r1 = linear_probe(x, y, xt, yt, epochs=30, batch_size=64, seed=3)
    assert torch.equal(torch.get_rng_state(), state)  # caller's global RNG untouched
    r2 = linear_probe(x, y, xt, yt, epochs=30, batch_size=64, seed=3)
    assert set(r1) == {"top1", "top5", "epochs"} and r1["epochs"] == 30
    assert r1["top1"] == pytest.approx(100.0) and r1["top5"] == 100.0  # top-min(5, C) with C = 3
    assert r1 == r2


def test_linear_probe_reproducible_on_overlapping_data():
    # Noisy, non-separable data: any nondeterminism in init/shuffling would show up in the accuracy.
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(200, 8, generator=g), torch.randint(0, 4, (200,), generator=g)
    runs = [linear_probe(x, y, x, y, epochs=30, batch_size=32, seed=7) for _ in range(2)]
    assert runs[0] == runs[1]
    assert 25.0 < runs[0]["top1"] < 100.0 and runs[0]["top1"] <= runs[0]["top5"]


def test_probe_lr_decays_from_lr_to_final_lr():
    opt, sched = make_probe_optimizer(nn.Linear(4, 2).parameters(), epochs=500, lr=1e-2, final_lr=1e-6)
    lrs = []
    for _ in range(500):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(1e-2)
    assert all(a > b for a, b in zip(lrs, lrs[1:]))
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-6, rel=1e-6)  # after the last epoch's step
    assert isinstance(opt, torch.optim.Adam) and opt.param_groups[0]["weight_decay"] == 5e-6


# ---------------------------------------------------------------- clustering metrics
def test_clustering_metrics_match_sklearn():
    from sklearn.cluster import KMeans
    from sklearn.metrics import adjusted_rand_score, silhouette_samples

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(150, 10, generator=g), torch.randint(0, 3, (150,), generator=g)
    m = clustering_metrics(x, y, seed=4, n_init=3)
    assert set(m) == {"silhouette_mean", "silhouette_std", "ari"}
    sil = silhouette_samples(x.numpy(), y.numpy())
    km = KMeans(n_clusters=3, random_state=4, n_init=3).fit_predict(x.numpy())
    assert m["silhouette_mean"] == pytest.approx(sil.mean(), abs=1e-6)
    assert m["silhouette_std"] == pytest.approx(sil.std(), abs=1e-6)
    assert m["ari"] == pytest.approx(adjusted_rand_score(y.numpy(), km))
    assert clustering_metrics(x.numpy(), y.numpy(), seed=4, n_init=3) == pytest.approx(m)  # numpy input


def test_clustering_metrics_separated_blobs_and_subsample():
    x, y = _blobs(n_per_class=50, dim=16, num_classes=4, sep=50.0)
    m = clustering_metrics(x, y)
    assert m["ari"] == 1.0
    assert m["silhouette_mean"] > 0.9
    sub = clustering_metrics(x, y, max_samples=80, seed=1)
    assert sub == clustering_metrics(x, y, max_samples=80, seed=1)
    assert sub["ari"] == 1.0


# ---------------------------------------------------------------- feature extraction
def test_extract_features_eval_bn_and_mode_restored():
    torch.manual_seed(0)
    enc = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    # Give BN non-trivial running stats so train-mode and eval-mode outputs differ.
    enc[1].running_mean.uniform_(-1, 1)
    enc[1].running_var.uniform_(0.5, 2)
    images = torch.randint(0, 256, (10, 3, 8, 8), dtype=torch.uint8)
    mean, std = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)

    enc.train()
    enc[1].eval()  # mixed per-module modes must survive too
    bn_stats = enc[1].running_mean.clone()
    feats = extract_features(enc, images, mean, std, batch_size=3)
    assert enc.training and not enc[1].training and enc[0].training
    assert torch.equal(enc[1].running_mean, bn_stats)  # no running-stat updates
    assert feats.shape == (10, 4) and feats.dtype == torch.float32 and feats.device.type == "cpu"

    enc.eval()
    x = (images.float() / 255 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = enc(x)
    assert torch.allclose(feats, expected, atol=1e-6)
    enc.train()
    with torch.no_grad():
        assert not torch.allclose(enc(x), expected, atol=1e-3)  # train-mode BN would differ
    with pytest.raises(ValueError):
        extract_features(enc, images.float(), mean, std)


# ---------------------------------------------------------------- embeddings and plots
def test_embed_2d_tsne_deterministic():
    x, _ = _blobs(n_per_class=40, dim=16)
    a = embed_2d(x, "tsne", seed=0, max_iter=250)
    b = embed_2d(x.numpy(), "tsne", seed=0, max_iter=250)
    assert a.shape == (120, 2) and np.isfinite(a).all()
    np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError):
        embed_2d(x, "pca")


@pytest.mark.slow  # registered in pyproject; still runs by default, deselect with -m "not slow"
def test_embed_2d_umap():
    """Slowest test in this file (numba compilation on first use of umap); kept to 200 points."""
    x, _ = _blobs(n_per_class=50, dim=16, num_classes=4)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        a = embed_2d(x, "umap", seed=0, max_iter=50)
    assert not [w for w in caught if "n_jobs" in str(w.message)]
    b = embed_2d(x, "umap", seed=0, max_iter=50)
    assert a.shape == (200, 2) and np.isfinite(a).all()
    np.testing.assert_allclose(a, b)


def test_plot_embeddings_writes_png_and_pdf(tmp_path):
    rng = np.random.default_rng(0)
    panels = {f"method {i}": (rng.normal(size=(100, 2)), rng.integers(0, 10, 100)) for i in range(4)}  # wraps
    names = [f"class {c}" for c in range(10)]
    fig = plot_embeddings(panels, names, path=tmp_path / "sub" / "tsne", title="t-SNE")
    assert (tmp_path / "sub" / "tsne.png").stat().st_size > 0
    assert (tmp_path / "sub" / "tsne.pdf").stat().st_size > 0
    assert len([ax for ax in fig.axes if ax.axison]) == 4 and len(fig.legends) == 1
    assert len(fig.legends[0].get_texts()) == 10
    with pytest.raises(ValueError):
        plot_embeddings({"bad": (np.zeros((2, 2)), np.array([0, 10]))}, names)
