"""DSA: every term against a literal float64 loop of the paper's equation as resolved in docs/decisions.md#dsa,
gradient checks, the HOG prior, the frozen priors, and training/resume on real CIFAR-10 (CPU)."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from osessl_core.config import TrainConfig
from osessl_core.engine import IncompatibleCheckpointError, Trainer, train
from osessl_core.losses import (arranging_loss, arranging_row_lse, connection_score, constraint_loss, prior_matrix,
                                regulator)
from osessl_core.methods import Batch, DataContext, StepRandom, build_method
from osessl_core.models.aux_features import HOGFeatures, colour_histogram, hog

from test_train import tiny

torch.manual_seed(0)
f64 = torch.float64


def close(a, b, tol=1e-9):
    assert torch.allclose(torch.as_tensor(a, dtype=f64), torch.as_tensor(b, dtype=f64), atol=tol, rtol=tol), (a, b)


def sq(a, b):
    return sum((x - y) ** 2 for x, y in zip(a, b))


def unit_rows(x):
    return [[v / math.sqrt(sum(u * u for u in row)) for v in row] for row in x.tolist()]


# ---- regulator M, prior M^pro, L_con ----------------------------------------------------------------------------
def f_s(d, h):
    return nn.Linear(2 * d, h).double(), nn.Linear(h, 1).double()


def test_regulator_is_the_concat_mlp_row_normalised():
    z = torch.randn(6, 4, dtype=f64)
    lin1, lin2 = f_s(4, 5)
    o = [[F.softplus(lin2(torch.relu(lin1(torch.cat([z[i], z[j]]))))).item() for j in range(6)] for i in range(6)]
    expected = [[o[i][j] / sum(o[i]) for j in range(6)] for i in range(6)]
    m = regulator(z, z, lin1.weight, lin1.bias, lin2.weight, lin2.bias)
    close(m, expected)
    close(regulator(z[4:], z, lin1.weight, lin1.bias, lin2.weight, lin2.bias), expected[4:])  # a shard of rows


def test_regulator_rows_never_divide_by_zero():
    z = torch.randn(3, 2, dtype=f64)
    lin1, lin2 = f_s(2, 3)
    m = regulator(z, z, lin1.weight, lin1.bias, lin2.weight, lin2.bias - 2000.0)  # every softplus underflows
    assert torch.isfinite(m).all()
    close(m.sum(1), torch.ones(3))


def test_prior_matrix_literal():
    a = torch.randn(5, 3, dtype=f64)
    u = unit_rows(a)
    tau = 0.7
    expected = []
    for i in range(5):
        row = [math.exp(-sq(u[i], u[j]) / tau) for j in range(5)]
        expected.append([v / sum(row) for v in row])
    close(prior_matrix(a, a, tau), expected)
    close(prior_matrix(a[:2], a, tau), expected[:2])


def test_constraint_loss_literal():
    m_pro, m = torch.rand(4, 4, dtype=f64), torch.rand(4, 4, dtype=f64)
    expected = sum((m_pro[i, j].item() - m[i, j].item()) ** 2 for i in range(4) for j in range(4))
    close(constraint_loss(m_pro, m), expected)


# ---- connection score --------------------------------------------------------------------------------------------
def literal_connection_score(aux, eta, mu):
    """The DSA code's get_goodneighbor: neighbour lists by cosine (self excluded), then its triple loop."""
    a = unit_rows(aux)
    n = len(a)
    neighbours = []
    for i in range(n):
        ranked = sorted(((sum(x * y for x, y in zip(a[i], a[j])), j) for j in range(n) if j != i), reverse=True)
        neighbours.append([j for _, j in ranked[:eta]])
    s = []
    for i in range(n):
        m = 0
        for j in neighbours[i]:
            s_ij = sum([1 if i in neighbours[l] else 0 for l in neighbours[j]])
            if s_ij > mu:
                m += 1
        s.append(m / eta)
    return s


@pytest.mark.parametrize("eta,mu", [(5, 1), (8, 0), (4, 2)])
def test_connection_score_matches_the_code_triple_loop(eta, mu):
    # Low-dimensional, so the neighbour graph is far from uniform; its own generator: the draw must not depend on
    # which tests ran before.
    aux = torch.randn(30, 3, dtype=f64, generator=torch.Generator().manual_seed(0))
    sc = connection_score(aux, eta, mu)
    expected = literal_connection_score(aux, eta, mu)
    close(sc, expected)
    assert min(expected) < max(expected) <= 1  # a non-trivial case


# ---- L_AM^s ------------------------------------------------------------------------------------------------------
def naive_arranging_loss(z, m, sc, alpha, tau):
    """eq. 19 with plain exp/log and j != i (docs/decisions.md#d-dsa-6):
    log(1 + sum_i sc_i sum_{j != i} exp((2 M_ij - alpha) |z_i - z_j|^2 / tau))."""
    total = 0.0
    for i in range(len(z)):
        total += sc[i] * sum(math.exp((2 * m[i][j] - alpha) * sq(z[i], z[j]) / tau) for j in range(len(z)) if j != i)
    return math.log(1 + total)


def am(z, m, sc, alpha=1.0, tau=0.7):
    return arranging_loss(arranging_row_lse(z, z, m, sc, torch.arange(z.shape[0]), alpha, tau))


def test_arranging_loss_literal():
    z = F.normalize(torch.randn(6, 4, dtype=f64), dim=1)
    m = torch.softmax(torch.randn(6, 6, dtype=f64), 1)
    sc = torch.tensor([0.0, 0.25, 0.5, 1.0, 0.75, 0.5], dtype=f64)  # sc = 0: that anchor's terms vanish
    for alpha, tau in [(1.0, 0.7), (0.3, 0.5)]:
        close(am(z, m, sc, alpha, tau), naive_arranging_loss(z.tolist(), m.tolist(), sc.tolist(), alpha, tau))


def test_arranging_loss_rows_gathered_from_shards():
    z = F.normalize(torch.randn(6, 4, dtype=f64), dim=1)
    m = torch.softmax(torch.randn(6, 6, dtype=f64), 1)
    sc = torch.rand(6, dtype=f64)
    rows = [arranging_row_lse(z[r * 3:(r + 1) * 3], z, m[r * 3:(r + 1) * 3], sc[r * 3:(r + 1) * 3],
                              torch.arange(3) + 3 * r) for r in range(2)]
    close(arranging_loss(torch.cat(rows)), am(z, m, sc))


def test_arranging_loss_is_stable_where_the_naive_formula_overflows():
    z = 10 * F.normalize(torch.randn(6, 4), dim=1)       # unnormalised: |z_i - z_j|^2 up to 400
    m, sc = torch.full((6, 6), 0.9), torch.full((6,), 0.5)
    e = (2 * m - 1) * torch.cdist(z, z) ** 2 / 0.7        # up to ~457 > log(float32 max) = 88.7
    naive32 = torch.log(1 + (sc[:, None] * torch.exp(e) * (1 - torch.eye(6))).sum())
    assert not torch.isfinite(naive32)
    stable = am(z, m, sc)
    assert stable.dtype == torch.float32 and torch.isfinite(stable)
    reference = naive_arranging_loss(z.double().tolist(), m.double().tolist(), sc.double().tolist(), 1.0, 0.7)
    assert math.isfinite(reference) and stable.item() == pytest.approx(reference, rel=1e-6)


def test_arranging_loss_all_zero_scores_is_finite():
    x = torch.randn(4, 3, requires_grad=True)
    loss = am(F.normalize(x, dim=1), torch.full((4, 4), 0.25), torch.zeros(4))
    loss.backward()
    assert torch.isfinite(loss) and loss.item() < 1e-30 and torch.isfinite(x.grad).all()


def test_gradchecks():
    z = torch.randn(4, 3, dtype=f64, requires_grad=True)
    m = torch.softmax(torch.randn(4, 4, dtype=f64), 1).requires_grad_()
    sc = torch.tensor([0.2, 0.6, 1.0, 0.4], dtype=f64)
    assert torch.autograd.gradcheck(lambda z, m: am(z, m, sc, 0.8, 0.7), (z, m))
    lin1, lin2 = f_s(3, 5)
    m_pro = prior_matrix(torch.randn(4, 6, dtype=f64), torch.randn(4, 6, dtype=f64))
    params = (z, lin1.weight, lin1.bias, lin2.weight, lin2.bias)
    assert torch.autograd.gradcheck(lambda z, *w: constraint_loss(m_pro, regulator(z, z, *w)), params)


# ---- the assembled objective --------------------------------------------------------------------------------------
@pytest.mark.parametrize("base", ["simclr", "byol"])
def test_method_objective_literal_and_fs_gradient_scaled(base):
    """L = L_ssl + nu L_AM^s + upsilon L_con on the 2N unit views, every DSA term from the literal loops above
    (f_s on each concatenated pair, the prior on the views' f_aux features); then f_s's gradient is exactly
    fs_grad_scale = 1/upsilon times the unscaled one while the forward value and the encoder's gradient stay."""
    cfg = TrainConfig(method="dsa", width=8, proj_hidden=16, proj_out=8, batch_size=8,
                      method_args={"base": base, "eta": 5})
    images = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
    data = DataContext(num_classes=10, image_size=32, mean=(0.5,) * 3, std=(0.25,) * 3, read_images=images.__getitem__,
                       train_labels=torch.zeros(8, dtype=torch.long), classes=[str(i) for i in range(10)])
    method = build_method(cfg, data).double()
    views = method.make_views(Batch.of(images, torch.arange(8)), StepRandom.create(0, torch.device("cpu")))
    views = views.to(torch.float64)
    terms, _ = method.loss_terms(views)
    with torch.no_grad():
        l_ssl, z1, z2 = method.base.ssl_terms(views)
    z = unit_rows(torch.cat([z1, z2]))
    a = unit_rows(torch.cat([views.features["prior1"], views.features["prior2"]]))
    n2 = len(z)
    lin1, lin2 = method.fs_in, method.fs_out
    with torch.no_grad():
        o = [[F.softplus(lin2(torch.relu(lin1(torch.tensor(z[i] + z[j], dtype=f64))))).item() for j in range(n2)]
             for i in range(n2)]
    m = [[o[i][j] / sum(o[i]) for j in range(n2)] for i in range(n2)]
    prior = []
    for i in range(n2):
        row = [math.exp(-sq(a[i], a[j]) / 0.7) for j in range(n2)]
        prior.append([v / sum(row) for v in row])
    l_con = sum((prior[i][j] - m[i][j]) ** 2 for i in range(n2) for j in range(n2))
    sc = literal_connection_score(torch.cat([views.features["prior1"], views.features["prior2"]]), 5, 1)
    l_am = naive_arranging_loss(z, m, sc, 1.0, 0.7)
    close(terms["ssl"], l_ssl)
    close(terms["con"], l_con)
    close(terms["am"], l_am)
    close(terms["loss"], l_ssl.item() + 0.1 * l_am + 100 * l_con)

    def grads(scale):
        method.fs_grad_scale = scale
        method.zero_grad()
        loss = method.loss_terms(views)[0]["loss"]
        loss.backward()
        return loss.detach(), {k: p.grad.clone() for k, p in method.named_parameters() if p.grad is not None}

    loss_scaled, scaled = grads(1 / 100)
    loss_plain, plain = grads(1.0)
    assert torch.equal(loss_scaled, loss_plain) and scaled.keys() == plain.keys()
    fs_keys = [k for k in plain if k.startswith("fs_")]
    assert len(fs_keys) == 4 and any(k.startswith("base.encoder") for k in plain)
    for k in plain:
        expected = plain[k] / 100 if k in fs_keys else plain[k]
        torch.testing.assert_close(scaled[k], expected, rtol=1e-10, atol=1e-14)


# ---- f_aux ---------------------------------------------------------------------------------------------------------
def smooth_images(n, seed):
    g = torch.Generator().manual_seed(seed)
    return F.interpolate(torch.rand(n, 3, 8, 8, generator=g), size=32, mode="bicubic").clamp(0, 1)


def test_hog_shape_brightness_invariance_and_discrimination():
    x = smooth_images(3, 0)
    h = hog(x)
    assert h.shape == (3, 7 * 7 * 36) and (h >= 0).all()
    close(hog(0.5 * x), h, 1e-5)                          # gradients scale, block normalisation undoes it
    assert F.cosine_similarity(h[0], h[1], dim=0) < 0.9    # different images, different descriptors


def test_hog_features_take_normalised_views():
    x = smooth_images(2, 1)
    mean, std = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)
    views = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    feats = HOGFeatures(mean, std)(views)
    assert feats.shape == (2, 1764 + 64)
    close(feats.norm(dim=1), torch.ones(2), 1e-6)
    close(feats[:, :1764] * math.sqrt(2), F.normalize(hog(x), dim=1), 1e-5)
    close(colour_histogram(x).sum(1), torch.ones(2), 1e-6)


@pytest.mark.slow
def test_frozen_prior_and_resume(tmp_path, cifar_root):
    """DSA on BYOL with the random_resnet prior: f_aux frozen, no BN buffers, always in batch-statistics mode;
    every trainable parameter gets a gradient (DDP needs it); a resumed run continues exactly like an
    uninterrupted one."""
    kw = dict(data_root=cifar_root, method_args={"prior": "random_resnet", "base": "byol"}, ckpt_every=2)
    straight = Trainer(tiny(tmp_path / "a", "dsa", max_steps=4, **kw))
    aux = straight.method.prior
    assert not any(p.requires_grad for p in aux.parameters()) and not list(aux.buffers())
    straight.method.eval()
    assert aux.training  # batch statistics, whatever the method's mode
    straight = straight.fit()
    assert all(p.grad is not None for p in straight.method.parameters() if p.requires_grad)
    Trainer(tiny(tmp_path / "b", "dsa", max_steps=2, **kw)).fit()
    resumed = Trainer(tiny(tmp_path / "b", "dsa", max_steps=4, **kw))
    assert resumed.step == 2
    resumed = resumed.fit()
    a, b = straight.method.state_dict(), resumed.method.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.slow
def test_checkpoint_prior(tmp_path, cifar_root):
    def with_prior(path):
        return Trainer(tiny(tmp_path, "dsa", data_root=cifar_root,
                            method_args={"prior": "checkpoint", "prior_checkpoint": str(path)}))

    source = Trainer(tiny(tmp_path, "simclr", data_root=cifar_root, max_steps=1)).fit()
    aux = with_prior(source.run_dir).method.prior
    theirs, ours = source.method.eval_encoder().state_dict(), aux.encoder.state_dict()
    assert theirs.keys() == ours.keys() and all(torch.equal(theirs[k], ours[k]) for k in theirs)
    assert not aux.training and not any(p.requires_grad for p in aux.parameters())
    with pytest.raises(FileNotFoundError, match="prior_checkpoint"):
        with_prior(tmp_path / "none")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(IncompatibleCheckpointError):
        with_prior(tmp_path / "junk.pt")


def test_sizes_are_validated(tmp_path, cifar_root):
    with pytest.raises(ValueError, match="eta=20 needs"):
        Trainer(tiny(tmp_path, "dsa", data_root=cifar_root, batch_size=8))   # 2N = 16
    with pytest.raises(ValueError, match="unknown prior"):
        Trainer(tiny(tmp_path, "dsa", data_root=cifar_root, method_args={"prior": "clip"}))


# ---- training ------------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_loss_decreases_on_cifar(tmp_path, cifar_root):
    """Default DSA (SimCLR base, HOG prior) at the tiny test's high learning rate (where f_s diverged before its
    gradient was scaled by 1/upsilon)."""
    rows = train(tiny(tmp_path, "dsa", data_root=cifar_root, epochs=10, base_lr=2.0)).metrics
    assert len(rows) == 40 and {"ssl", "am", "con", "sc_mean"} <= set(rows[0])
    for key in ("loss", "con"):  # f_s learns the prior
        v = [r[key] for r in rows]
        assert all(math.isfinite(x) for x in v) and sum(v[-8:]) / 8 < sum(v[:8]) / 8, (key, v)
