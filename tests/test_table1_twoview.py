"""SimSiam, MoCo v3, Barlow Twins and VICReg: each loss against a literal float64 transcription of its paper's
equation and against lightly's module on the same inputs (with lightly's scaling conventions stated), the
stop-gradients, the rank shards of the global-batch losses, and a loss decrease on real CIFAR-10 (CPU)."""
import math

import pytest
import torch
import torch.nn.functional as F
from lightly.loss import BarlowTwinsLoss, NegativeCosineSimilarity, NTXentLoss, VICRegLoss

from osessl_core.engine import train
from osessl_core.losses import barlow_twins_loss, mocov3_loss, simsiam_loss, vicreg_loss, vicreg_terms
from osessl_core.losses.barlow import standardize

from test_contrastive import close, dot, unit_list
from test_train import tiny

GEN = torch.Generator().manual_seed(0)


def randn(*shape, scale=None, grad=False):
    x = torch.randn(*shape, generator=GEN, dtype=torch.float64)
    if scale is not None:  # per-dimension scales, so that VICReg's variance hinge is active in some dimensions only
        x = x * torch.tensor(scale, dtype=torch.float64)
    return x.requires_grad_(grad)


def columns(z):
    rows = z.tolist()
    return [[r[j] for r in rows] for j in range(len(rows[0]))]


def mean(v):
    return sum(v) / len(v)


# ------------------------------------------------------------------------------------------------ SimSiam

def literal_simsiam(p1, p2, z1, z2):
    """Chen & He eqs. 1-2: D(p, z) = -mean_i p_i/|p_i| . z_i/|z_i|, L = D(p1, z2)/2 + D(p2, z1)/2."""
    def d(p, z):
        return -mean([dot(a, b) for a, b in zip(unit_list(p), unit_list(z))])
    return d(p1, z2) / 2 + d(p2, z1) / 2


def test_simsiam_literal_lightly_and_stop_gradient():
    p1, p2, z1, z2 = (randn(5, 4, grad=True) for _ in range(4))
    loss = simsiam_loss(p1, p2, z1, z2)
    close(loss, literal_simsiam(*(x.detach() for x in (p1, p2, z1, z2))))
    # lightly's NegativeCosineSimilarity is D itself (mean of -cos); the stop-gradient is the caller's detach.
    q1, q2 = p1.detach().clone().requires_grad_(), p2.detach().clone().requires_grad_()
    ncs = NegativeCosineSimilarity()
    ref = ncs(q1, z2.detach()) / 2 + ncs(q2, z1.detach()) / 2
    close(loss, ref)
    loss.backward()
    ref.backward()
    close(p1.grad, q1.grad)
    close(p2.grad, q2.grad)
    assert z1.grad is None and z2.grad is None   # stop-gradient on the projector side


# ------------------------------------------------------------------------------------------------ MoCo v3

def literal_ctr(q, k, T):
    """MoCo v3 Algorithm 1: 2 tau * mean_i -log exp(q_i.k_i / tau) / sum_j exp(q_i.k_j / tau), unit q and k."""
    Q, K = unit_list(q), unit_list(k)
    total = 0.0
    for i in range(len(Q)):
        denom = sum(math.exp(dot(Q[i], K[j]) / T) for j in range(len(K)))
        total += -math.log(math.exp(dot(Q[i], K[i]) / T) / denom)
    return 2 * T * total / len(Q)


def lightly_ctr(q, k, T):
    """The same with lightly's NTXentLoss in its MoCo (memory-bank) form: per query, the bank holds the other N-1
    keys, so its logits are [q.k_i, q.k_j (j != i)] with the positive first. Lightly has no 2 tau factor."""
    n, d = q.shape
    fn = NTXentLoss(temperature=T, memory_bank_size=(n - 1, d)).double()
    keys = F.normalize(k, dim=1)
    total = 0.0
    for i in range(n):
        fn.memory_bank.bank = keys[torch.arange(n) != i].clone()
        total = total + fn(q[i:i + 1].detach(), k[i:i + 1])  # a query without grad leaves the bank unchanged
    return 2 * T * total / n


@pytest.mark.parametrize("T", [0.2, 1.0])
def test_mocov3_literal_lightly_and_keys_get_no_gradient(T):
    q1, q2, k1, k2 = (randn(5, 4, grad=True) for _ in range(4))
    loss = mocov3_loss(q1, q2, k1, k2, temperature=T)
    Q1, Q2, K1, K2 = (x.detach() for x in (q1, q2, k1, k2))
    close(loss, literal_ctr(Q1, K2, T) + literal_ctr(Q2, K1, T))
    close(loss, lightly_ctr(Q1, K2, T) + lightly_ctr(Q2, K1, T))
    loss.backward()
    assert q1.grad.abs().sum() > 0 and q2.grad.abs().sum() > 0
    assert k1.grad is None and k2.grad is None   # keys come from the momentum network


# ------------------------------------------------------------------------------------------------ Barlow Twins

def literal_barlow(z1, z2, lambd, eps=1e-5):
    """Zbontar et al. eq. 1: C_ij = sum_b a_bi b_bj / N on batch-standardised embeddings (biased variance + eps, the
    official code's BatchNorm1d), L = sum_i (1 - C_ii)^2 + lambda sum_{i != j} C_ij^2."""
    def standardised(z):
        out = []
        for col in columns(z):
            m = mean(col)
            var = mean([(v - m) ** 2 for v in col])
            out.append([(v - m) / math.sqrt(var + eps) for v in col])
        return out
    a, b, n = standardised(z1), standardised(z2), z1.shape[0]
    d = len(a)
    C = [[dot(a[i], b[j]) / n for j in range(d)] for i in range(d)]
    return (sum((1 - C[i][i]) ** 2 for i in range(d))
            + lambd * sum(C[i][j] ** 2 for i in range(d) for j in range(d) if i != j))


@pytest.mark.parametrize("lambd", [5e-3, 0.5])
def test_barlow_literal_and_lightly(lambd):
    z1, z2 = randn(7, 5), randn(7, 5)
    z2 = z2 + 0.8 * z1   # correlated views, so that C is far from 0
    loss = barlow_twins_loss(z1, z2, lambd=lambd)
    close(loss, literal_barlow(z1, z2, lambd))
    # lightly: the same standardisation (F.batch_norm: biased variance, eps 1e-5), C / N, no loss scale.
    close(loss, BarlowTwinsLoss(lambda_param=lambd)(z1, z2))


# ------------------------------------------------------------------------------------------------ VICReg

def literal_vicreg(z1, z2, lam=25.0, mu=25.0, nu=1.0, eps=1e-4):
    """Bardes et al. eqs. 1-6: lam s + mu (v(Z) + v(Z')) + nu (c(Z) + c(Z')); s is the mean over the n x d entries
    (the official code's MSE), variances and covariances unbiased (n - 1)."""
    n, d = z1.shape
    s = sum((a - b) ** 2 for ra, rb in zip(z1.tolist(), z2.tolist()) for a, b in zip(ra, rb)) / (n * d)

    def v(z):
        total = 0.0
        for col in columns(z):
            m = mean(col)
            total += max(0.0, 1 - math.sqrt(sum((x - m) ** 2 for x in col) / (n - 1) + eps))
        return total / d

    def c(z):
        cols = columns(z)
        ms = [mean(col) for col in cols]
        total = 0.0
        for i in range(d):
            for j in range(d):
                if i != j:
                    total += (sum((a - ms[i]) * (b - ms[j]) for a, b in zip(cols[i], cols[j])) / (n - 1)) ** 2
        return total / d

    return lam * s + mu * (v(z1) + v(z2)) + nu * (c(z1) + c(z2))


def test_vicreg_literal_and_lightly():
    scale = [0.3, 0.7, 1.5, 2.0]   # hinge active in the first two dimensions only
    z1, z2 = randn(6, 4, scale=scale), randn(6, 4, scale=scale)
    close(vicreg_loss(z1, z2), literal_vicreg(z1, z2))
    close(vicreg_loss(z1, z2, sim_weight=1.0, var_weight=2.0, cov_weight=3.0),
          literal_vicreg(z1, z2, 1.0, 2.0, 3.0))
    # lightly follows the official code, which halves the two branches' variance sum: mu_lightly = 2 mu.
    close(vicreg_loss(z1, z2), VICRegLoss(lambda_param=25.0, mu_param=50.0, nu_param=1.0)(z1, z2))
    t = vicreg_terms(z1, z2)
    close(VICRegLoss()(z1, z2), vicreg_loss(z1, z2) - 25.0 * t["var"] / 2)


# ------------------------------------------------------------------------------------------------ rank shards

def per_rank_losses(name, z1, z2, ranks=2):
    """What each rank computes in the method: its own rows against the gathered global batch (z1, z2)."""
    n = z1.shape[0] // ranks
    shards = [(z1[r * n:(r + 1) * n], z2[r * n:(r + 1) * n], r * n) for r in range(ranks)]
    if name == "mocov3":   # z1, z2 stand for the predictions; keys are a detached copy of them, gathered
        return [mocov3_loss(a, b, z1.detach(), z2.detach(), offset=o) for a, b, o in shards]
    if name == "barlow":
        return [barlow_twins_loss(z1, z2) for _ in shards]
    return [vicreg_loss(a, b, z1, z2) for a, b, _ in shards]


@pytest.mark.parametrize("name", ["mocov3", "barlow", "vicreg"])
def test_rank_shards_average_to_the_global_loss_and_gradient(name):
    """Two 'ranks' with 4 rows each: the mean of their losses (what DDP averages, with the gathered rows' gradients
    summed back to their owners) is the 1-process loss, and so is its gradient."""
    z1, z2 = randn(8, 5, scale=[0.5, 1.0, 1.5, 0.8, 2.0], grad=True), randn(8, 5, grad=True)
    full = {"mocov3": lambda: mocov3_loss(z1, z2, z1.detach(), z2.detach()),
            "barlow": lambda: barlow_twins_loss(z1, z2), "vicreg": lambda: vicreg_loss(z1, z2)}[name]()
    g_full = torch.autograd.grad(full, (z1, z2))
    shards = sum(per_rank_losses(name, z1, z2)) / 2
    close(shards, full)
    for a, b in zip(torch.autograd.grad(shards, (z1, z2)), g_full):
        close(a, b)


def test_barlow_per_rank_statistics_are_not_the_global_loss():
    """Why Barlow gathers the embeddings: standardising per rank and averaging C (lightly's and solo-learn's
    distributed form) is not the loss of the global batch."""
    z1, z2 = randn(8, 5), randn(8, 5)
    c = sum(standardize(z1[r * 4:(r + 1) * 4]).T @ standardize(z2[r * 4:(r + 1) * 4]) / 4 for r in range(2)) / 2
    d = torch.diagonal(c)
    per_rank = (1 - d).pow(2).sum() + 5e-3 * (c.pow(2).sum() - d.pow(2).sum())
    assert abs(float(per_rank - barlow_twins_loss(z1, z2))) > 1e-2


# ------------------------------------------------------------------------------------------------ training

@pytest.mark.slow
@pytest.mark.parametrize("method", ["simsiam", "mocov3", "barlow", "vicreg"])
def test_loss_decreases_on_cifar(tmp_path, cifar_root, method):
    result = train(tiny(tmp_path, method, data_root=cifar_root, epochs=6, base_lr=2.0))
    losses = [row["loss"] for row in result.metrics]
    assert len(losses) == 24 and all(math.isfinite(v) for v in losses)
    assert sum(losses[-6:]) / 6 < sum(losses[:6]) / 6, losses


# ------------------------------------------------------------------------------------------------ Table 1 rows

def test_table1_paper_rows_for_barlow_and_the_unimplemented_methods():
    from osessl_core import experiments as ex
    from osessl_core.methods import METHODS
    assert ex.paper_row("table1", "cifar10", "barlow") == {"linear_top1": 92.10, "knn_top1": 88.09}
    assert set(ex.PAPER["table1"]["cifar10"]) - set(METHODS) <= {"cwrgp", "intl"}   # every other row is built
    measured = [{"dataset": "cifar10", "row": "resa", "method": "resa", "linear_top1": 50.0, "knn_top1": 40.0}]
    rows = ex.not_implemented_rows("table1", measured)
    assert [r["method"] for r in rows] == [m for m in ("cwrgp", "intl") if m not in METHODS]
    for r in rows:
        assert r["linear_top1"] == r["knn_top1"] == ex.NOT_IMPLEMENTED and r["dataset"] == "cifar10"
        assert {k: r[f"paper_{k}"] for k in ("linear_top1", "knn_top1")} == ex.paper_row("table1", "cifar10",
                                                                                       r["method"])
    assert ex.not_implemented_rows("table1", []) == []   # no dataset ran (all skipped): no rows
    shown = ex.table(measured + rows, ["method", "linear_top1", "paper_linear_top1"])
    assert list(shown["linear_top1"]) == [50.0] + [ex.NOT_IMPLEMENTED] * len(rows)
