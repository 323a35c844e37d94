"""OSESSL (ICLR'26): ReSA + exemplar-guided prototypes + interpolation consistency, eq. 14.

L = L_cluster + lambda (L_align + L_disp) + mu (L_mix-proto + L_mix-ins). How the paper's gaps are resolved:
docs/decisions.md#osessl; every alternative reading listed there is a parameter here.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..config import ConfigError
from ..data.exemplars import select_exemplars
from ..distributed import gather_nograd, gather_with_grad, shard_bounds
from ..losses import (exemplar_prototypes, interpolation_losses, prototype_alignment_loss, prototype_dispersion_loss,
                      prototype_probabilities)
from ..memory import MemoryBank
from .base import Batch, DataContext, RunContext, StepRandom, Views, host_scalar
from .resa import ReSA, ReSAParams


@dataclass
class OSESSLParams(ReSAParams):
    shots: int = 1                  # labelled exemplars per class (k-shot: z_l is the class mean, re-normalised)
    k: int = 8                      # neighbours per exemplar (Table 7)
    alpha: float = 0.75             # eq. 2 weighting (Table 8)
    memory_size: int = 4096         # 4096 for CIFAR, 65536 for ImageNet
    tau_s: float = 0.1              # student temperature (Table 16 read as swapped: docs/decisions.md#d-osessl-1)
    tau_t: float = 0.04             # teacher temperature
    lam: float = 1.0                # weight of L_proto = L_align + L_disp
    mu: float = 1.0                 # weight of L_mix = L_mix-proto + L_mix-ins (0.25 on ImageNet)
    mix_zeta: float = 1.0           # beta ~ Beta(zeta, zeta); not given in the paper (docs/decisions.md#d-osessl-7)
    use_cluster: bool = True        # Table 6 ablations
    use_align: bool = True
    use_disp: bool = True
    use_mix_proto: bool = True
    use_mix_ins: bool = True
    normalize_prototypes: bool = False   # eq. 4 does not re-normalise (docs/decisions.md#d-osessl-5)
    detach_weights: bool = False         # detach pi in eq. 4 (a variant, docs/decisions.md#d-osessl-5)
    symmetric_align: bool = False        # also align online(strong) to momentum(weak) (docs/decisions.md#d-osessl-2)
    memory_view: str = "weak"            # momentum view in the bank: weak | strong (docs/decisions.md#d-osessl-3)

    def __post_init__(self):
        def need(ok, name, rule):
            if not ok:
                raise ConfigError(f"osessl parameter {name} must be {rule}, got {getattr(self, name)!r}")
        for name in ("shots", "k", "memory_size"):
            need(getattr(self, name) >= 1, name, ">= 1")
        need(self.k <= self.memory_size, "k", f"<= memory_size ({self.memory_size}): the neighbours come from the bank")
        need(0 <= self.alpha <= 1, "alpha", "in [0, 1]")
        for name in ("tau_s", "tau_t", "mix_zeta", "temperature", "sinkhorn_eps"):
            need(getattr(self, name) > 0, name, "> 0")
        need(self.memory_view in ("weak", "strong"), "memory_view", "'weak' or 'strong'")


class OSESSL(ReSA):
    name = "osessl"
    Params = OSESSLParams

    def __init__(self, ctx: RunContext, params: OSESSLParams, data: DataContext):
        super().__init__(ctx, params, data)
        self.num_classes = data.num_classes
        idx = select_exemplars(data.train_labels, data.num_classes, shots=params.shots, seed=ctx.seed)
        self.register_buffer("exemplar_indices", idx)
        self.register_buffer("exemplar_images", data.read_images(idx).clone())
        self.train_labels, self.classes = data.train_labels, data.classes  # for the exemplars.json run file
        self.memory = MemoryBank(params.memory_size, ctx.proj_out)

    def run_files(self):
        idx = self.exemplar_indices.cpu()
        labels = self.train_labels[idx].tolist()
        return {"exemplars.json": {"exemplar_indices": idx.tolist(), "shots": self.params.shots, "labels": labels,
                                   "classes": [self.classes[i] for i in labels]}}

    @property
    def uses_mix(self) -> bool:
        p = self.params
        return p.mu != 0 and (p.use_mix_proto or p.use_mix_ins)

    def make_views(self, batch: Batch, rng: StepRandom) -> Views:
        views = super().make_views(batch, rng)
        # Each rank forwards a contiguous share of the exemplars (fresh weak augmentation each step), so that
        # across ranks BN sees every exemplar exactly once, as in a single process; z_l is gathered later.
        n_ex = self.exemplar_images.shape[0]
        lo, hi = shard_bounds(n_ex, self.ctx.rank, self.ctx.world_size)
        views.images["exemplars"] = self.weak(self.exemplar_images[lo:hi], rng.device, total=n_ex, offset=lo)
        if self.uses_mix:
            ctx, dev = self.ctx, batch.device
            beta = float(rng.host.beta(self.params.mix_zeta, self.params.mix_zeta))
            # One permutation of the global batch (same on every rank); partners may live on other ranks.
            perm = torch.randperm(ctx.global_batch, generator=rng.device, device=dev)
            index = torch.arange(batch.size, device=dev) + ctx.offset
            beta = host_scalar(beta, dev)
            views.draws.update(beta=beta, index=index, partner=perm[index])
            strong_all = gather_nograd(views.images["strong"])
            # eq. 10, in normalised pixel space
            views.images["mixed"] = beta * views.images["weak"] + (1 - beta) * strong_all[perm[index]]
        return views

    def loss_terms(self, views):
        p = self.params
        weak, strong = views.images["weak"], views.images["strong"]
        n = weak.shape[0]
        # Exemplars share the weak view's forward (same transform, so consistent BN statistics;
        # docs/decisions.md#d-osessl-8).
        h_cat, g_cat = self.embed(torch.cat([weak, views.images["exemplars"]]))
        h_weak, g_weak = h_cat[:n], g_cat[:n]
        z_weak = F.normalize(g_weak, dim=1)
        n_ex = self.exemplar_images.shape[0]
        w = self.ctx.world_size
        shards = [hi - lo for lo, hi in (shard_bounds(n_ex, r, w) for r in range(w))]
        z_l = gather_with_grad(F.normalize(g_cat[n:], dim=1), shards)  # all exemplars, class order
        if p.shots > 1:
            z_l = F.normalize(z_l.view(self.num_classes, p.shots, -1).mean(1), dim=1)
        _, g_strong = self.embed(strong)
        momentum = self.cluster_terms(h_weak, g_weak, g_strong, weak, strong)
        l_cluster, zm_weak, zm_strong = momentum["loss"], momentum["zm_weak"], momentum["zm_strong"]

        protos, _, _ = exemplar_prototypes(z_l, self.memory.bank, k=p.k, alpha=p.alpha, valid=self.memory.valid_mask(),
                                           normalize=p.normalize_prototypes, detach_weights=p.detach_weights)
        l_align = prototype_alignment_loss(z_weak, zm_strong, protos, p.tau_s, p.tau_t)
        if p.symmetric_align:
            z_strong = F.normalize(g_strong, dim=1)
            l_align = 0.5 * (l_align + prototype_alignment_loss(z_strong, zm_weak, protos, p.tau_s, p.tau_t))
        l_disp = prototype_dispersion_loss(protos, p.tau_s)

        zero = l_cluster * 0.0
        l_mix_proto = l_mix_ins = zero
        if self.uses_mix:
            _, g_mix = self.embed(views.images["mixed"])
            z_mix = F.normalize(g_mix, dim=1)
            p_weak = prototype_probabilities(z_weak, protos, p.tau_s)
            zm_strong_all = momentum["zm_strong_all"]  # partners' teacher targets may come from other ranks
            p_teacher = prototype_probabilities(zm_strong_all, protos.detach(), p.tau_t)
            l_mix_proto, l_mix_ins = interpolation_losses(z_mix, zm_strong_all, protos, p_weak, p_teacher,
                                                          views.draws["beta"], views.draws["partner"], p.tau_s,
                                                          index=views.draws["index"])

        total = ((l_cluster if p.use_cluster else zero)
                 + p.lam * ((l_align if p.use_align else zero) + (l_disp if p.use_disp else zero))
                 + p.mu * ((l_mix_proto if p.use_mix_proto else zero) + (l_mix_ins if p.use_mix_ins else zero)))
        terms = {"loss": total, "cluster": l_cluster.detach(), "align": l_align.detach(), "disp": l_disp.detach(),
                 "mix_proto": l_mix_proto.detach(), "mix_ins": l_mix_ins.detach()}
        enqueue = zm_weak if p.memory_view == "weak" else zm_strong
        return terms, {"enqueue": enqueue}

    def after_step(self, views, updates) -> None:
        # MoCo order: the bank is updated after the loss, so neighbours are always historical embeddings.
        self.memory.enqueue(updates["enqueue"])
