"""Every loss term against a slow, literal transcription of its equation (float64 loops)."""
import math

import pytest
import torch
import torch.nn.functional as F

from osessl_core.losses import (discriminative_scores, exemplar_prototypes, interpolation_losses,
                                prototype_alignment_loss, prototype_dispersion_loss, prototype_probabilities,
                                resa_loss, sinkhorn)

torch.manual_seed(0)


def unit(*shape):
    return F.normalize(torch.randn(*shape, dtype=torch.float64), dim=-1)


def close(a, b, tol=1e-5):
    assert torch.allclose(torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64),
                          atol=tol, rtol=tol), (a, b)


# ---- Sinkhorn ---------------------------------------------------------------------------------------------
def literal_sinkhorn(S, eps, iters):
    """ReSA's code, transcribed: Q = exp(S/eps)^T [K x B]; Q /= sum; rows /= K; cols /= B; Q *= B; return Q^T."""
    Q = [[math.exp(S[i][j] / eps) for i in range(len(S))] for j in range(len(S[0]))]
    K, B = len(Q), len(Q[0])
    tot = sum(map(sum, Q))
    Q = [[q / tot for q in row] for row in Q]
    for _ in range(iters):
        Q = [[q / sum(row) / K for q in row] for row in Q]
        cols = [sum(Q[r][c] for r in range(K)) for c in range(B)]
        Q = [[Q[r][c] / cols[c] / B for c in range(B)] for r in range(K)]
    return [[Q[r][c] * B for r in range(K)] for c in range(B)]


@pytest.mark.parametrize("n_on,n_mom", [(5, 5), (4, 7)])
def test_sinkhorn_matches_resa_code(n_on, n_mom):
    S = unit(n_on, 6) @ unit(n_mom, 6).T
    close(sinkhorn(S, 0.05, 3), literal_sinkhorn(S.tolist(), 0.05, 3), 1e-5)


def test_sinkhorn_marginals():
    S = unit(8, 16) @ unit(12, 16).T
    A = sinkhorn(S, eps=0.05, iters=3)
    close(A.sum(1), torch.ones(8))                       # rows (online samples) sum to 1 exactly
    A = sinkhorn(S, eps=0.5, iters=200)                  # at convergence, columns get equal mass B/K
    close(A.sum(0), torch.full((12,), 8 / 12), 1e-4)
    assert not sinkhorn(S.requires_grad_()).requires_grad


# ---- ReSA -------------------------------------------------------------------------------------------------
def test_resa_loss_literal():
    n, d = 6, 8
    h, hm = torch.randn(n, 10, dtype=torch.float64), torch.randn(n, 10, dtype=torch.float64)
    zw, zs, zmw, zms = (torch.randn(n, d, dtype=torch.float64) for _ in range(4))
    T = 0.4
    A = literal_sinkhorn((F.normalize(h, dim=1) @ F.normalize(hm, dim=1).T).tolist(), 0.05, 3)
    nz = lambda x: F.normalize(x, dim=1).tolist()
    zw_, zs_, zmw_, zms_ = nz(zw), nz(zs), nz(zmw), nz(zms)
    dot = lambda a, b: sum(x * y for x, y in zip(a, b))

    def ce(u, v):  # mean_i -sum_j A_ij log softmax_j(<u_i, v_j>/T)
        tot = 0.0
        for i in range(n):
            logits = [dot(u[i], v[j]) / T for j in range(n)]
            lse = math.log(sum(math.exp(l) for l in logits))
            tot += -sum(A[i][j] * (logits[j] - lse) for j in range(n))
        return tot / n

    expected = 0.5 * (ce(zw_, zms_) + ce(zs_, zmw_))
    close(resa_loss(h, hm, zw, zs, zmw, zms, temperature=T), expected)


def test_resa_gradient_only_through_online_embeddings():
    n, d = 6, 8
    h, hm, zw, zs, zmw, zms = (torch.randn(n, d, requires_grad=True) for _ in range(6))
    resa_loss(h, hm, zw, zs, zmw, zms).backward()
    assert zw.grad.abs().sum() > 0 and zs.grad.abs().sum() > 0
    for t in (h, hm, zmw, zms):
        assert t.grad is None


# ---- OSESSL eqs. 2-4 --------------------------------------------------------------------------------------
def literal_scores(zl, M, alpha):
    C, m = len(zl), len(M)
    dot = lambda a, b: sum(x * y for x, y in zip(a, b))
    s = [[0.0] * m for _ in range(C)]
    for c in range(C):
        for j in range(m):
            others = [dot(zl[o], M[j]) for o in range(C) if o != c]
            s[c][j] = alpha * dot(zl[c], M[j]) - (1 - alpha) * (max(others) if others else 0.0)
    return s


@pytest.mark.parametrize("C", [1, 2, 5])
def test_discriminative_scores_literal(C):
    zl, M = unit(C, 8), unit(30, 8)
    close(discriminative_scores(zl, M, 0.75), literal_scores(zl.tolist(), M.tolist(), 0.75))


def test_exemplar_prototypes_literal():
    C, m, d, k, alpha = 4, 40, 8, 8, 0.75
    zl, M = unit(C, d), unit(m, d)
    protos, weights, nbrs = exemplar_prototypes(zl, M, k=k, alpha=alpha)
    s = literal_scores(zl.tolist(), M.tolist(), alpha)
    for c in range(C):
        top = sorted(range(m), key=lambda j: -s[c][j])[:k]                     # S_c
        assert sorted(nbrs[c].tolist()) == sorted(top)
        comps = [zl[c].tolist()] + [M[j].tolist() for j in nbrs[c].tolist()]   # eq. 3
        logits = [sum(a * b for a, b in zip(zl[c].tolist(), q)) for q in comps]
        z = sum(math.exp(l) for l in logits)
        pi = [math.exp(l) / z for l in logits]                                  # eq. 4
        proto = [sum(pi[j] * comps[j][t] for j in range(k + 1)) for t in range(d)]
        close(weights[c], pi)
        close(protos[c], proto)


def test_prototypes_fall_back_to_exemplar_when_memory_short():
    zl, M = unit(3, 8), unit(16, 8)
    valid = torch.zeros(16, dtype=torch.bool)
    protos, w, _ = exemplar_prototypes(zl, M, k=8, valid=valid)
    close(protos, zl)                                    # empty bank: c = z_l exactly
    valid[:3] = True                                     # fewer valid slots than k: only those can contribute
    protos, w, nbrs = exemplar_prototypes(zl, M, k=8, valid=valid)
    assert (w[:, 1:][~valid[nbrs]] == 0).all()
    assert set(nbrs[valid[nbrs]].tolist()) <= {0, 1, 2}
    expected, _, _ = exemplar_prototypes(zl, M[:3], k=3)
    close(protos, expected)


# ---- eqs. 5-9 ---------------------------------------------------------------------------------------------
def literal_softmax(rowlogits):
    mx = max(rowlogits)
    e = [math.exp(l - mx) for l in rowlogits]
    return [x / sum(e) for x in e]


def test_alignment_loss_literal_and_eq8_gradient():
    n, C, d, ts, tt = 6, 4, 8, 0.1, 0.04
    z, zt, c = unit(n, d).requires_grad_(), unit(n, d), unit(C, d) * 0.9
    loss = prototype_alignment_loss(z, zt, c, ts, tt)
    dot = lambda a, b: sum(x * y for x, y in zip(a, b))
    Z, ZT, Cc = z.tolist(), zt.tolist(), c.tolist()
    p = [literal_softmax([dot(Z[i], Cc[k]) / ts for k in range(C)]) for i in range(n)]
    pt = [literal_softmax([dot(ZT[i], Cc[k]) / tt for k in range(C)]) for i in range(n)]
    close(loss, -sum(pt[i][k] * math.log(p[i][k]) for i in range(n) for k in range(C)) / n)   # eq. 6
    loss.backward()
    for i in range(n):  # eq. 8 (per sample, the batch mean contributes 1/n): (E_p[c] - E_p'[c]) / tau_s
        grad = [(sum(p[i][k] * Cc[k][t] for k in range(C)) - sum(pt[i][k] * Cc[k][t] for k in range(C))) / ts
                for t in range(d)]
        close(z.grad[i] * n, grad)


def test_alignment_teacher_side_is_detached():
    z, zt, c = unit(5, 8).requires_grad_(), unit(5, 8).requires_grad_(), unit(3, 8).requires_grad_()
    prototype_alignment_loss(z, zt, c).backward()
    assert zt.grad is None
    # the prototype gradient comes from the student side only
    c2 = c.detach().clone().requires_grad_()
    logits = z.detach() @ c2.T / 0.1
    target = torch.softmax(zt.detach() @ c.detach().T / 0.04, dim=1)
    (-(target * logits.log_softmax(1)).sum(1).mean()).backward()
    close(c.grad, c2.grad)


def test_dispersion_literal_and_gradient_reaches_exemplars():
    C, d, ts = 5, 8, 0.1
    c = unit(C, d)
    expected = sum(float(c[a] @ c[b]) for a in range(C) for b in range(C) if a != b) / (C * (C - 1)) / ts
    close(prototype_dispersion_loss(c, ts), expected)
    zl = unit(C, d).requires_grad_()
    M = unit(32, d).requires_grad_()
    protos, _, _ = exemplar_prototypes(zl, M, k=4)
    prototype_dispersion_loss(protos).backward()
    assert zl.grad is not None and zl.grad.abs().sum() > 0   # the only gradient path of L_disp
    assert M.grad is None                                      # memory rows are constants


# ---- eqs. 10-13 -------------------------------------------------------------------------------------------
def test_interpolation_losses_literal():
    n, C, d, ts, beta = 6, 4, 8, 0.1, 0.3
    zm, zt, c = unit(n, d), unit(n, d), unit(C, d) * 0.8
    p_weak = torch.softmax(torch.randn(n, C, dtype=torch.float64), 1)
    p_t = torch.softmax(torch.randn(n, C, dtype=torch.float64), 1)
    perm = torch.tensor([2, 1, 0, 5, 3, 4])                     # 1 is a fixed point: both targets on one column
    lp, li = interpolation_losses(zm, zt, c, p_weak, p_t, beta, perm, ts)
    dot = lambda a, b: sum(x * y for x, y in zip(a, b))
    Zm, Zt, Cc, P, PT, pi = zm.tolist(), zt.tolist(), c.tolist(), p_weak.tolist(), p_t.tolist(), perm.tolist()
    exp_proto = exp_ins = 0.0
    for i in range(n):
        target = [beta * P[i][k] + (1 - beta) * PT[pi[i]][k] for k in range(C)]             # eq. 11
        pm = literal_softmax([dot(Zm[i], Cc[k]) / ts for k in range(C)])
        exp_proto += -sum(target[k] * math.log(pm[k]) for k in range(C)) / n               # eq. 12
        y = [0.0] * n                                                                       # y_m = b y + (1-b) y~
        y[i] += beta
        y[pi[i]] += 1 - beta
        q = literal_softmax([dot(Zm[i], Zt[j]) / ts for j in range(n)])
        exp_ins += -sum(y[j] * math.log(q[j]) for j in range(n)) / n                        # eq. 13
    close(lp, exp_proto)
    close(li, exp_ins)


def test_interpolation_gradients_flow_to_mixed_view_and_prototypes_only():
    n, C, d = 6, 3, 8
    zm, zt, c = unit(n, d).requires_grad_(), unit(n, d).requires_grad_(), unit(C, d).requires_grad_()
    pw = torch.softmax(torch.randn(n, C, dtype=torch.float64), 1).requires_grad_()
    pt = torch.softmax(torch.randn(n, C, dtype=torch.float64), 1).requires_grad_()
    lp, li = interpolation_losses(zm, zt, c, pw, pt, 0.5, torch.randperm(n), 0.1)
    (lp + li).backward()
    assert zm.grad.abs().sum() > 0 and c.grad.abs().sum() > 0
    assert zt.grad is None and pw.grad is None and pt.grad is None


def test_losses_ignore_bf16_autocast():
    """Under autocast the loss maths must stay fp32 (bf16 Sinkhorn scores would shift exp(S/0.05) by percents)."""
    torch.manual_seed(1)
    n, C, d = 16, 5, 32
    h, hm, zw, zs, zmw, zms = (torch.randn(n, d) for _ in range(6))
    zl, mem = F.normalize(torch.randn(C, d), dim=1), F.normalize(torch.randn(64, d), dim=1)
    perm = torch.randperm(n)
    scores = F.normalize(h, dim=1) @ F.normalize(hm, dim=1).T  # an input: computed outside autocast

    def all_terms():
        protos, _, _ = exemplar_prototypes(zl, mem, k=4)
        p_w, p_t = prototype_probabilities(zw, protos, 0.1), prototype_probabilities(zms, protos, 0.04)
        return torch.stack([(sinkhorn(scores) * scores).sum(), resa_loss(h, hm, zw, zs, zmw, zms),
                            prototype_alignment_loss(zw, zms, protos), prototype_dispersion_loss(protos),
                            *interpolation_losses(zw, zms, protos, p_w, p_t, 0.3, perm)])

    exact = all_terms()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_autocast = all_terms()
    assert under_autocast.dtype == torch.float32
    assert torch.allclose(under_autocast, exact, rtol=1e-6, atol=1e-6)
