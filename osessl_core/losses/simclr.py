"""SimCLR's NT-Xent (Chen et al., ICML'20), with the global batch as negatives under DDP."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .common import full_precision


@full_precision
def nt_xent(z1: torch.Tensor, z2: torch.Tensor, z1_all: torch.Tensor | None = None,
            z2_all: torch.Tensor | None = None, offset: int = 0, temperature: float = 0.5) -> torch.Tensor:
    """mean over anchors of -log softmax(cos(z_a, z_c) / T) at the anchor's other view, over all 2N views but itself.

    Every anchor has 1 positive (its other view) and 2N-2 negatives. z1, z2: this rank's two views (n x d, not
    necessarily normalised); z1_all, z2_all: the global batch (N x d, rank order, this rank's rows at `offset`),
    gathered with gradient; None in a single process.
    """
    z1_all = z1 if z1_all is None else z1_all
    z2_all = z2 if z2_all is None else z2_all
    n, big_n = z1.shape[0], z1_all.shape[0]
    anchors = F.normalize(torch.cat([z1, z2]), dim=1)
    candidates = F.normalize(torch.cat([z1_all, z2_all]), dim=1)
    logits = anchors @ candidates.T / temperature                         # (2n, 2N)
    idx = torch.arange(n, device=z1.device) + offset
    own = torch.cat([idx, idx + big_n])                                   # each anchor's own column
    positive = torch.cat([idx + big_n, idx])                              # ... and its other view's
    cols = torch.arange(2 * big_n, device=z1.device)
    logits = logits.masked_fill(cols[None, :] == own[:, None], float("-inf"))
    # Cross-entropy written out: inductor's fused nll_loss kernel for this graph failed to build in Triton 3.6.
    return (torch.logsumexp(logits, dim=1) - logits.gather(1, positive[:, None]).squeeze(1)).mean()
