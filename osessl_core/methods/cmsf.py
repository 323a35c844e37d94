"""MSF (Koohpayegani et al., ICCV'21) and CMSF (Navaneet et al., ECCV'22): pull the online query towards the
(constrained) nearest neighbours of the target embedding in a memory of target embeddings. Decisions:
docs/decisions.md#cmsf; registry names "msf" (no constraint) and "cmsf" (`constraint` self | sup | semi).

Per step: q = normalize(pred(proj(enc(x_strong)))), u = normalize(proj_t(enc_t(x_weak))) (target, EMA with a
constant m = 0.99, updated before its forward); u is enqueued in M, then S_i = the k nearest neighbours of u_i in
the constraint set C_i of M, and L = mean_i (1/k) sum_{m in S_i} (2 - 2 q_i^T m) (one direction only).
  none (MSF): C_i = M.   self: 0.5 L(C_i = k' NNs of the previous-epoch embedding w_i in M') + 0.5 L(M).
  sup: C_i = same label.  semi: same (pseudo-)label if confident, else C_i = M.

Resolutions (docs/decisions.md#cmsf):
* Optimiser: the trainer's SGD and schedule, shared by all methods for the same budget (the paper: SGD 0.05,
  cosine without warm-up, wd 1e-4). Only the constant EMA momentum is the method's own (`momentum`).
* Networks: projector and predictor are the code's get_mlp, Linear-BN-ReLU-Linear, with the widths every method
  shares, ctx.proj_hidden / ctx.proj_out (default 2048 / 512, as BYOL's head; the code's CIFAR sizes are
  `--proj-hidden 1024 --proj-out 128`, docs/decisions.md#d-cmsf-6); the predictor always exists (ctx.predictor is
  not used).
* Views: the project's weak view for the target; its strong view, without blur and solarisation, for the query.
  The shared colour jitter has saturation 0.2 where the code uses 0.4.
* M starts empty, with a validity mask, instead of random unit vectors: random entries are not data, and their
  dataset index (-1) would read a real image's cache entry in M'. The batch is always in M and k <= batch, so every
  row has k valid neighbours from the first step.
* "The batch is enqueued before the search": loss_terms is compiled and has no side effects, so it searches M as it
  will be after the enqueue (the batch copied out of place into the slots it is about to overwrite), and
  after_step writes the same rows in place. Same neighbours as the code, state updated once, after the optimiser.
* self: the two-slot pool keeps a per-image write count instead of the code's slot bit (bit = count % 2); the
  count also says whether an image has a previous embedding (count >= 2). Default `epoch1="msf"`: rows without
  one use the unconstrained neighbours and entries without one never enter C_i. In epoch 1 that is every row, so
  the loss is exactly MSF (docs/decisions.md#d-cmsf-4); it also covers images first seen later (drop_last). `"random"`
  reproduces the code: the randn-initialised pool takes part, so C_i = {u_i} + (k'-1) random entries in epoch 1.
  An image held twice in M (across an epoch boundary) gives two entries with the same M' embedding, an exact tie
  in C_i as in the code; rounding breaks it, so N ranks may pick the other, equally near entry than 1 rank does.
* semi: labelled split = `label_fraction` of every class, drawn with the run seed (saved in the run file labelled.json and in the
  `labelled` buffer). The code's sup_queue is a FIFO of the labelled images' target embeddings; here it is the
  latest target embedding of every labelled image seen so far (the same set as a FIFO of exactly that size,
  without the code's unfilled rows relabelled to class 0; the cache keeps every image's, static shapes, and only
  labelled rows are read). The head (on u, proj_out -> 2 proj_out -> classes, BN
  kept local so every rank retrains the same copy) is retrained in begin_step at mid-epoch (global batch < 1024)
  and at the end of each epoch: SGD lr 0.01, momentum 0.9, wd 1e-4, batch 256 (or all seen labelled images if
  fewer), `head_epochs` epochs, not re-initialised, permutations seeded by (seed, step) so a resumed run retrains
  identically.
* eval_encoder: the online encoder, which the official k-NN/linear evaluation loads (encoder_q weights).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..data.augment import ViewAugment, weak_view
from ..data.exemplars import labelled_fraction
from ..distributed import gather_nograd, world_size
from ..losses import (constrain_to_labels, constrain_to_members, mean_shift_loss, nearest, pairwise_distances,
                      pseudo_labels)
from ..losses.common import upcast
from ..memory import MemoryBank
from ..models import mlp, momentum_copy
from .base import Batch, DataContext, Method, RunContext, StepRandom, Views

CONSTRAINTS = ("none", "self", "sup", "semi")


@dataclass
class MSFParams:
    k: int = 5                  # neighbours, the target itself included (k = 1 is asymmetric BYOL)
    memory_size: int = 8192     # CIFAR (ImageNet: 128000); at most the training-set size (docs/decisions.md#d-cmsf-2)
    momentum: float = 0.99      # constant target EMA; the trainer's cosine schedule is not used
    solarize_prob: float = 0.0  # the code's strong view has no solarisation


@dataclass
class CMSFParams(MSFParams):
    constraint: str = "self"      # none (= MSF) | self | sup | semi
    k: int | None = None          # None: 5 for none/self, 10 for sup/semi
    k_prime: int = 5              # self: |C_i| (run_selfsup.sh; the parser default is 10)
    epoch1: str = "msf"           # self: "msf" | "random" (the code's epoch-1 behaviour), see the module docstring
    label_fraction: float = 0.1   # semi: labelled fraction of every class
    threshold: float = 0.85       # semi: pseudo-label confidence
    head_lr: float = 0.01         # semi: pseudo-label head optimiser (fresh each round)
    head_epochs: int = 10         # semi: epochs per round
    head_batch: int = 256


class LabelledMemory(MemoryBank):
    """M: FIFO of target embeddings with parallel label (-1: none or not confident) and dataset-index (-1: empty
    slot) buffers, all persistent."""

    def __init__(self, size: int, dim: int):
        super().__init__(size, dim)
        self.register_buffer("labels", torch.full((size,), -1, dtype=torch.long))
        self.register_buffer("index", torch.full((size,), -1, dtype=torch.long))

    def _slots(self, n: int) -> torch.Tensor:
        if n > self.size:
            raise ValueError(f"cannot enqueue {n} embeddings into a memory of {self.size}; raise the memory size")
        return (self.ptr + torch.arange(n, device=self.ptr.device)) % self.size

    def with_batch(self, x: torch.Tensor, labels: torch.Tensor, index: torch.Tensor):
        """(bank, labels, index, valid) as they will be after enqueue(x, labels, index); changes nothing."""
        s = self._slots(x.shape[0])
        return (self.bank.index_copy(0, s, x.to(self.bank.dtype)), self.labels.index_copy(0, s, labels),
                self.index.index_copy(0, s, index), self.valid_mask().index_fill(0, s, True))

    @torch.no_grad()
    def enqueue(self, x: torch.Tensor, labels: torch.Tensor, index: torch.Tensor) -> None:
        """Write the global batch (gathered by the caller, which searched it already) at the head of the queue."""
        s = self._slots(x.shape[0])
        self.bank.index_copy_(0, s, x.to(self.bank.dtype))
        self.labels.index_copy_(0, s, labels)
        self.index.index_copy_(0, s, index)
        self.ptr.copy_((self.ptr + x.shape[0]) % self.size)
        self.filled.copy_(torch.clamp(self.filled + x.shape[0], max=self.size))


class EmbeddingCache(nn.Module):
    """The last `slots` target embeddings of every training image, written in turn to slot (writes % slots), and
    each image's write count. With 2 slots (CMSF_self's pool), slot (writes % 2) holds the embedding written before
    the latest one, i.e. the previous epoch's; with 1 slot it is the latest embedding (semi)."""

    def __init__(self, init: torch.Tensor):
        super().__init__()
        self.register_buffer("pool", init)  # [slots, N, d]
        self.register_buffer("writes", torch.zeros(init.shape[1], dtype=torch.long))

    def before_latest(self, ids: torch.Tensor, writes: torch.Tensor) -> torch.Tensor:
        """pool[writes % 2, ids]: each image's embedding before its latest write, given the write counts."""
        return self.pool[writes[ids] % self.pool.shape[0], ids]

    @torch.no_grad()
    def write_(self, x: torch.Tensor, ids: torch.Tensor) -> None:
        self.pool[self.writes[ids] % self.pool.shape[0], ids] = x.to(self.pool.dtype)
        self.writes.index_add_(0, ids, torch.ones_like(ids))


class LocalBatchNorm1d(nn.Module):
    """BatchNorm1d that the trainer's SyncBN conversion leaves alone (it is no _BatchNorm): every rank retrains an
    identical pseudo-label head on identical data, so its statistics must stay local."""

    def __init__(self, n: int, momentum: float = 0.1, eps: float = 1e-5):
        super().__init__()
        self.weight, self.bias = nn.Parameter(torch.ones(n)), nn.Parameter(torch.zeros(n))
        self.register_buffer("running_mean", torch.zeros(n))
        self.register_buffer("running_var", torch.ones(n))
        self.momentum, self.eps = momentum, eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, self.training,
                            self.momentum, self.eps)


class CMSF(Method):
    name = "cmsf"
    Params = CMSFParams

    def __init__(self, ctx: RunContext, params: CMSFParams, data: DataContext):
        super().__init__()
        p = self.params = params
        if p.constraint not in CONSTRAINTS:
            raise ValueError(f"constraint must be one of {CONSTRAINTS}, got {p.constraint!r}")
        if p.epoch1 not in ("msf", "random"):
            raise ValueError(f"epoch1 must be 'msf' or 'random', got {p.epoch1!r}")
        self.k = p.k if p.k is not None else (10 if p.constraint in ("sup", "semi") else 5)
        n, batch, dim = len(data.train_labels), ctx.global_batch, ctx.proj_out
        if not batch <= p.memory_size <= n:
            raise ValueError(f"memory_size={p.memory_size} must lie between the global batch ({batch}, enqueued "
                             f"whole) and the training-set size ({n}): a larger M holds images several times, "
                             "which breaks the previous-epoch bookkeeping (docs/decisions.md#d-cmsf-2)")
        if not 1 <= self.k <= batch:
            raise ValueError(f"k={self.k} must lie between 1 and the global batch ({batch}): at the first step M "
                             "holds only the batch")
        if not 1 <= p.k_prime <= p.memory_size:
            raise ValueError(f"k_prime={p.k_prime} must lie between 1 and memory_size={p.memory_size}")
        if p.constraint == "semi" and not 0 < p.label_fraction <= 1:
            raise ValueError(f"label_fraction must be in (0, 1], got {p.label_fraction}")

        self.encoder = ctx.encoder()
        self.projector = mlp([self.encoder.out_dim, ctx.proj_hidden, dim], last_bn=False)
        self.predictor = mlp([dim, ctx.proj_hidden, dim], last_bn=False)
        self.target_encoder = momentum_copy(self.encoder)
        self.target_projector = momentum_copy(self.projector)
        self.weak = weak_view(data.image_size, data.mean, data.std)
        self.strong = ViewAugment("strong", data.image_size, data.mean, data.std, solarize_prob=p.solarize_prob)
        self.memory = LabelledMemory(p.memory_size, dim)

        self.cache = self.head = None
        if p.constraint == "self":
            self.cache = EmbeddingCache(torch.randn(2, n, dim))  # the code's init; read only with epoch1="random"
        if p.constraint in ("sup", "semi"):
            known = data.train_labels.long().clone()
            if p.constraint == "semi":
                self.register_buffer("labelled", labelled_fraction(known, p.label_fraction, ctx.seed))
                known = torch.full_like(known, -1).index_copy_(0, self.labelled, known[self.labelled])
            self.register_buffer("known_labels", known)  # -1: label not available to the method
        if p.constraint == "semi":
            self.cache = EmbeddingCache(torch.zeros(1, n, dim))
            self.head = nn.Sequential(nn.Linear(dim, 2 * dim), LocalBatchNorm1d(2 * dim), nn.ReLU(inplace=True),
                                      nn.Linear(2 * dim, data.num_classes))
            self.head.requires_grad_(False)  # trained by retrain_head only, never by the trainer's optimiser
            self.head.eval()
            self.seed, self.retrain_mid_epoch = ctx.seed, batch < 1024

    # ---- hooks -----------------------------------------------------------------------------------------------
    def train(self, mode: bool = True):
        super().train(mode)
        if self.head is not None:
            self.head.eval()  # pseudo-labelling uses the head's running statistics
        return self

    def begin_step(self, step: int, steps_per_epoch: int) -> None:
        if self.head is None or step == 0:
            return
        pos = step % steps_per_epoch
        if pos == 0 or (self.retrain_mid_epoch and pos == steps_per_epoch // 2):
            self.retrain_head(step)

    def view_pipelines(self):
        return [self.weak, self.strong]

    def make_views(self, batch: Batch, rng: StepRandom) -> Views:
        return Views({"weak": batch.view(self.weak, rng.device), "strong": batch.view(self.strong, rng.device)},
                     ids=batch.ids)

    def momentum_pairs(self):
        return [(self.encoder, self.target_encoder), (self.projector, self.target_projector)]

    def momentum(self, scheduled: float) -> float:
        return self.params.momentum  # CMSF's constant target momentum, not the trainer's schedule

    def loss_terms(self, views):
        q = F.normalize(upcast(self.predictor(self.projector(self.encoder(views.images["strong"])))), dim=1)
        with torch.no_grad():
            u = F.normalize(upcast(self.target_projector(self.target_encoder(views.images["weak"]))), dim=1)
        ids = views.ids
        y = self.batch_labels(u, ids)
        bank, neighbours, updates = self.search(u, ids, y)
        c = self.params.constraint
        if c == "none":
            loss = mean_shift_loss(q, bank, neighbours["msf"])
            return {"loss": loss}, updates
        constrained = mean_shift_loss(q, bank, neighbours["constrained"])
        if c == "self":
            msf = mean_shift_loss(q, bank, neighbours["msf"])
            loss = 0.5 * constrained + 0.5 * msf
            return {"loss": loss, "cmsf": constrained.detach(), "msf": msf.detach()}, updates
        terms = {"loss": constrained}
        if c == "semi":
            terms["confident"] = (y >= 0).float().mean()  # share of constrained rows (labelled or confident)
        return terms, updates

    def after_step(self, views, updates) -> None:
        self.memory.enqueue(updates["u"], updates["y"], updates["ids"])
        if self.cache is not None:
            self.cache.write_(updates["u"], updates["ids"])

    def eval_encoder(self) -> nn.Module:
        return self.encoder  # the official evaluation loads encoder_q, the online network

    def eval_projector(self) -> nn.Sequential:
        return self.projector

    def run_files(self):
        if self.params.constraint != "semi":
            return {}
        return {"labelled.json": {"labelled_indices": self.labelled.tolist(),
                                  "label_fraction": self.params.label_fraction}}

    # ---- neighbours ------------------------------------------------------------------------------------------
    def batch_labels(self, u: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """y_i for the label constraint: ground truth (sup), GT or confident pseudo-label else -1 (semi), -1."""
        c = self.params.constraint
        if c == "sup":
            return self.known_labels[ids]
        if c == "semi":
            with torch.autocast(u.device.type, enabled=False):
                logits = self.head(u)
            return pseudo_labels(logits, self.known_labels[ids], self.params.threshold)
        return torch.full_like(ids, -1)

    def search(self, u: torch.Tensor, ids: torch.Tensor, y: torch.Tensor):
        """M after enqueueing the global batch, and each local row's neighbours in it: "msf" (none, self) and
        "constrained" (self, sup, semi). Also the gathered batch, for after_step to enqueue."""
        u_all, y_all, ids_all = gather_nograd(u), gather_nograd(y), gather_nograd(ids)
        bank, labels, index, valid = self.memory.with_batch(u_all, y_all, ids_all)
        dist = pairwise_distances(u, bank)
        c, out = self.params.constraint, {}
        if c in ("none", "self"):
            out["msf"] = nearest(dist, self.k, valid)
        if c == "self":
            out["constrained"] = self.self_constrained(dist, ids, ids_all, index, valid, out["msf"])
        elif c in ("sup", "semi"):
            out["constrained"] = nearest(constrain_to_labels(dist, y, labels), self.k, valid)
        return bank, out, {"u": u_all, "y": y_all, "ids": ids_all}

    def self_constrained(self, dist, ids, ids_all, index, valid, msf):
        """S_i = top-k of d(u_i, M) - 5 on C_i, C_i = the k' NNs of w_i in M' (docs/decisions.md#d-cmsf-3), both
        read from the pool as it will be after this step's write."""
        writes = self.cache.writes.index_add(0, ids_all, torch.ones_like(ids_all))
        mem_ids = index.clamp(min=0)  # empty slots (-1) are excluded by `valid`
        w = self.cache.before_latest(ids, writes)            # previous embedding of each query image
        m_prev = self.cache.before_latest(mem_ids, writes)   # M': previous embedding of each memory entry's image
        has_prev = writes >= 2 if self.params.epoch1 == "msf" else torch.ones_like(writes, dtype=torch.bool)
        eligible = valid & has_prev[mem_ids]
        members = nearest(pairwise_distances(w, m_prev), self.params.k_prime, eligible)
        constrained = nearest(constrain_to_members(dist, members, eligible), self.k, valid)
        return torch.where(has_prev[ids].unsqueeze(1), constrained, msf)

    def retrain_head(self, step: int) -> None:
        """One round of pseudo-label head training on the latest target embedding of each labelled image seen so
        far (docs/decisions.md#d-cmsf-5). Syncs with the host (twice per epoch)."""
        p = self.params
        seen = self.labelled[self.cache.writes[self.labelled] > 0]
        if len(seen) < 2:  # BN needs two samples
            return
        x, y = self.cache.pool[0, seen], self.known_labels[seen]
        size = min(p.head_batch, len(seen))
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        params = list(self.head.parameters())
        optimizer = torch.optim.SGD(params, lr=p.head_lr, momentum=0.9, weight_decay=1e-4)
        self.head.train().requires_grad_(True)
        try:
            with torch.enable_grad():
                for _ in range(p.head_epochs):
                    perm = torch.randperm(len(seen), generator=generator).to(x.device)
                    for b in range(len(seen) // size):
                        rows = perm[b * size:(b + 1) * size]
                        loss = F.cross_entropy(self.head(x[rows]), y[rows])
                        optimizer.zero_grad(set_to_none=True)
                        loss.backward()
                        optimizer.step()
        finally:
            self.head.eval().requires_grad_(False)


class MSF(CMSF):
    """Mean-shift (ICCV'21): CMSF with no constraint."""
    name = "msf"
    Params = MSFParams

    def __init__(self, ctx: RunContext, params: MSFParams, data: DataContext):
        super().__init__(ctx, CMSFParams(**dataclasses.asdict(params), constraint="none"), data)
