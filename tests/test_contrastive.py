"""SimCLR's NT-Xent and BYOL's loss against literal float64 loops; both methods train on real CIFAR-10 (CPU)."""
import math

import pytest
import torch

from osessl_core.engine import train
from osessl_core.losses import byol_loss, nt_xent

from test_train import tiny

torch.manual_seed(0)


def close(a, b, tol=1e-9):
    assert torch.allclose(torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64),
                          atol=tol, rtol=tol), (a, b)


def unit_list(x):
    return [[v / math.sqrt(sum(u * u for u in row)) for v in row] for row in x.tolist()]


def dot(a, b):
    return sum(x * y for x, y in zip(a, b))


def literal_nt_xent(z1, z2, T):
    """SimCLR eq. 1, l(a, pos) = -log exp(sim(a, pos)/T) / sum_{k != a} exp(sim(a, k)/T), averaged over 2N anchors."""
    z = unit_list(z1) + unit_list(z2)
    n = len(z1)
    total = 0.0
    for a in range(2 * n):
        pos = a + n if a < n else a - n
        denom = sum(math.exp(dot(z[a], z[k]) / T) for k in range(2 * n) if k != a)
        total += -math.log(math.exp(dot(z[a], z[pos]) / T) / denom)
    return total / (2 * n)


def test_nt_xent_literal():
    z1, z2 = torch.randn(5, 4, dtype=torch.float64), torch.randn(5, 4, dtype=torch.float64)
    close(nt_xent(z1, z2, temperature=0.5), literal_nt_xent(z1, z2, 0.5))
    close(nt_xent(z1, z2, temperature=0.1), literal_nt_xent(z1, z2, 0.1))


def test_nt_xent_rank_shards_average_to_the_global_loss():
    """Two 'ranks' with 3 rows each, every anchor against the gathered 6: the mean of their losses (what DDP
    averages) is the loss of the whole batch."""
    z1, z2 = torch.randn(6, 4, dtype=torch.float64), torch.randn(6, 4, dtype=torch.float64)
    shards = [nt_xent(z1[r * 3:(r + 1) * 3], z2[r * 3:(r + 1) * 3], z1, z2, offset=3 * r) for r in range(2)]
    close(sum(shards) / 2, nt_xent(z1, z2))


def test_byol_loss_literal_and_stop_gradient():
    p1, p2, t1, t2 = (torch.randn(4, 3, dtype=torch.float64, requires_grad=True) for _ in range(4))
    P1, P2, T1, T2 = (unit_list(x.detach()) for x in (p1, p2, t1, t2))

    def half(p, t):  # mean_i ||p_i/|p_i| - t_i/|t_i| ||^2 (BYOL eq. 2)
        return sum(sum((a - b) ** 2 for a, b in zip(p[i], t[i])) for i in range(len(p))) / len(p)

    loss = byol_loss(p1, p2, t1, t2)
    close(loss, half(P1, T2) + half(P2, T1))
    loss.backward()
    assert p1.grad.abs().sum() > 0 and p2.grad.abs().sum() > 0
    assert t1.grad is None and t2.grad is None


@pytest.mark.slow
@pytest.mark.parametrize("method", ["simclr", "byol"])
def test_loss_decreases_on_cifar(tmp_path, cifar_root, method):
    result = train(tiny(tmp_path, method, data_root=cifar_root, epochs=10, base_lr=2.0))
    losses = [row["loss"] for row in result.metrics]
    assert len(losses) == 40 and all(math.isfinite(v) for v in losses)
    assert sum(losses[-8:]) / 8 < sum(losses[:8]) / 8, losses
