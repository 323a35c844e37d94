"""SwAV (Caron et al., NeurIPS'20): swapped prediction of Sinkhorn codes over learnable prototypes.

z = normalize(g(e(x))) for each of the two views; scores z^T c_k against K prototypes C (a bias-free linear layer,
L2-normalised before every step, as in the official code: `begin_step` renormalises the rows in place, outside the
compiled loss). Codes q = Sinkhorn-Knopp(scores, eps 0.05, 3 iterations) over the global batch plus, once enabled,
the queue; loss 1/2 [l(z_1, q_2) + l(z_2, q_1)] with l the cross-entropy against softmax(z^T C / 0.1).

CIFAR recipe: solo-learn's scripts/pretrain/cifar/swav.yaml (vturrisi/solo-learn 9187ea3), whose defaults fill in
the Sinkhorn settings (sk_epsilon 0.05, sk_iters 3, the paper's values): K = 3000 prototypes, tau = 0.1, a
queue of 3840 embeddings per view (15 x 256), from epoch 50, prototypes frozen for the first 2 epochs.
- Queue: one FIFO of the gathered unit embeddings per view, filled after every step from step 0 (solo-learn), read
  with the current prototypes. It is used from epoch `queue_start_epoch` on, but not before it is full (the
  official code's rule; the fill is a function of the step, so the switch is too). Every rank holds the whole
  queue; each takes an equal shard of it into Sinkhorn, so the rows of all ranks are the global batch plus the
  queue, each once (the official code keeps a separate per-rank queue of that rank's own samples, with the same
  union). The switch is a Python flag: the compiled loss recompiles once when the queue comes in.
- Frozen prototypes: their gradient is multiplied by a 0/1 gate (the forward value is exact), a buffer set in
  `begin_step` from the epoch, so no recompilation; solo-learn sets the gradient to None instead. With a zero
  gradient the trainer's weight decay still shrinks C slightly, which the renormalisation undoes.

Deviations, shared by every rival here: the trainer's SGD (lr 0.3 x B/256, momentum 0.9, weight decay 1e-4,
warm-up + cosine) instead of solo-learn's LARS (lr 0.6, wd 1e-6, eta 0.02) and the project's strong augmentation
for both views instead of solo-learn's symmetric pipeline (jitter 0.8/0.8/0.8/0.2, blur 0.5); two crops, no
multi-crop (solo-learn's CIFAR config has none either). The head is Linear-BN-ReLU-Linear (the paper's and
solo-learn's) with the shared widths ctx.proj_hidden / ctx.proj_out (solo-learn: 2048 / 128). Each view is its own
forward, so BN sees one view's batch. The evaluated network is the encoder e (the one the paper keeps).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..distributed import rank, world_size
from ..losses import swav_loss
from ..losses.common import upcast
from ..memory import MemoryBank
from .base import DataContext, RunContext
from .two_view import TwoViewMethod


@dataclass
class SwAVParams:
    num_prototypes: int = 3000        # solo-learn cifar/swav.yaml (and the paper's CIFAR-sized K)
    temperature: float = 0.1          # solo-learn cifar/swav.yaml; the paper's tau
    sinkhorn_eps: float = 0.05        # the paper's epsilon; solo-learn's default sk_epsilon
    sinkhorn_iters: int = 3           # the paper's 3 iterations; solo-learn's default sk_iters
    queue_size: int = 3840            # per view, global; solo-learn cifar/swav.yaml; 0 disables the queue
    queue_start_epoch: int = 50       # solo-learn cifar/swav.yaml epoch_queue_starts
    freeze_prototypes_epochs: int = 2  # solo-learn cifar/swav.yaml


class SwAV(TwoViewMethod):
    name = "swav"
    Params = SwAVParams

    def __init__(self, ctx: RunContext, params: SwAVParams, data: DataContext):
        super().__init__(ctx, data)
        self.params = p = params
        self.global_batch = ctx.global_batch
        if p.num_prototypes < 1 or p.temperature <= 0 or p.sinkhorn_eps <= 0 or p.sinkhorn_iters < 1:
            raise ValueError("num_prototypes and sinkhorn_iters must be >= 1, temperature and sinkhorn_eps > 0")
        if p.queue_size < 0 or p.queue_start_epoch < 0 or p.freeze_prototypes_epochs < 0:
            raise ValueError("queue_size, queue_start_epoch and freeze_prototypes_epochs must be >= 0")
        if p.queue_size and (p.queue_size < self.global_batch or p.queue_size % ctx.world_size):
            raise ValueError(f"queue_size={p.queue_size} must hold the global batch ({self.global_batch}, enqueued "
                             f"whole) and split evenly over the {ctx.world_size} ranks")
        self.prototypes = nn.Linear(ctx.proj_out, p.num_prototypes, bias=False)
        if p.queue_size:
            self.queue1 = MemoryBank(p.queue_size, ctx.proj_out)
            self.queue2 = MemoryBank(p.queue_size, ctx.proj_out)
        # Step-dependent, set by begin_step: the prototypes' gradient gate (derived: not saved) and the queue flag.
        self.register_buffer("prototype_grad", torch.zeros(()), persistent=False)
        self.use_queue = False
        self.normalize_prototypes()

    @torch.no_grad()
    def normalize_prototypes(self) -> None:
        w = self.prototypes.weight
        w.copy_(F.normalize(w, dim=1))

    def queue_in_use(self, step: int, steps_per_epoch: int) -> bool:
        """From queue_start_epoch on, once the queue has been filled (it fills by one global batch per step)."""
        p = self.params
        return bool(p.queue_size) and step >= p.queue_start_epoch * steps_per_epoch and \
            step * self.global_batch >= p.queue_size

    def begin_step(self, step: int, steps_per_epoch: int) -> None:
        self.normalize_prototypes()
        self.prototype_grad.fill_(0.0 if step < self.params.freeze_prototypes_epochs * steps_per_epoch else 1.0)
        self.use_queue = self.queue_in_use(step, steps_per_epoch)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(upcast(self.project(x)), dim=1)

    def loss_terms(self, views):
        p = self.params
        z1, z2 = self.embed(views.images["view1"]), self.embed(views.images["view2"])
        c = self.prototypes.weight
        c = c.detach() + self.prototype_grad * (c - c.detach())   # value c; gradient gated
        q1 = q2 = None
        if self.use_queue:
            shard = p.queue_size // self.ctx.world_size
            rows = slice(self.ctx.rank * shard, (self.ctx.rank + 1) * shard)
            q1, q2 = self.queue1.bank[rows], self.queue2.bank[rows]
        loss = swav_loss(z1, z2, c, q1, q2, temperature=p.temperature, eps=p.sinkhorn_eps, iters=p.sinkhorn_iters)
        return {"loss": loss, "swav": loss.detach()}, {"z1": z1.detach(), "z2": z2.detach()}

    def after_step(self, views, updates) -> None:
        if self.params.queue_size:
            self.queue1.enqueue(updates["z1"])
            self.queue2.enqueue(updates["z2"])
