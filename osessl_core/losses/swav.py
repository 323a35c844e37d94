"""SwAV's swapped prediction (Caron et al., NeurIPS'20, eq. 1-3) with Sinkhorn codes over the global batch + queue."""
from __future__ import annotations

import torch

from .common import full_precision, soft_cross_entropy
from .sinkhorn import sinkhorn


@torch.no_grad()
def swav_codes(scores: torch.Tensor, queue_scores: torch.Tensor | None = None, eps: float = 0.05,
               iters: int = 3) -> torch.Tensor:
    """Codes Q (n x K, rows sum to 1) of this rank's n samples by Sinkhorn-Knopp over the global batch plus queue.

    `scores` are z^T c for this rank's samples; `queue_scores` for this rank's share of the queue (the queue rows
    take part in the equipartition, their codes are dropped, as in SwAV's code). The project's `sinkhorn` sums
    over the rows of all ranks (all-reduced) and over the K prototypes locally, so the rank shards of
    [batch; queue] must be equal in size: together they are the whole global batch and queue, each once."""
    rows = scores if queue_scores is None else torch.cat([scores, queue_scores])
    return sinkhorn(rows, eps=eps, iters=iters)[: scores.shape[0]]


@full_precision
def swav_loss(z1: torch.Tensor, z2: torch.Tensor, prototypes: torch.Tensor, queue1: torch.Tensor | None = None,
              queue2: torch.Tensor | None = None, temperature: float = 0.1, eps: float = 0.05,
              iters: int = 3) -> torch.Tensor:
    """1/2 [l(z_1, q_2) + l(z_2, q_1)], l(z_t, q_s) = -mean_i sum_k q_s,ik log softmax_k(z_t,i^T c_k / tau).

    z1, z2: unit embeddings of views 1 and 2 (this rank's rows); prototypes: C (K x d, unit rows); queue_v: the
    queued unit embeddings that join view v's Sinkhorn (this rank's shard of the queue) or None. The scores
    z^T C are computed here, in full precision: they enter exp(. / eps). Codes carry no gradient."""
    s1, s2 = z1 @ prototypes.T, z2 @ prototypes.T
    with torch.no_grad():
        c = prototypes.detach()
        q1 = swav_codes(s1, None if queue1 is None else queue1 @ c.T, eps, iters)
        q2 = swav_codes(s2, None if queue2 is None else queue2 @ c.T, eps, iters)
    return 0.5 * (soft_cross_entropy(q2, s1 / temperature) + soft_cross_entropy(q1, s2 / temperature))
