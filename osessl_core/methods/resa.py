"""ReSA (Weng et al., ICML'25): self-clustering via Sinkhorn on online-vs-momentum encodings.

Resolutions: docs/decisions.md#resa."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..data.augment import strong_view, weak_view
from ..distributed import gather_nograd
from ..losses import resa_loss
from .base import Batch, DataContext, RunContext, StepRandom, TwinMethod, Views


@dataclass
class ReSAParams:
    temperature: float = 0.4     # cross-entropy temperature
    sinkhorn_eps: float = 0.05
    sinkhorn_iters: int = 3
    blur_prob: float = 0.0       # strong-view Gaussian blur (0 on CIFAR, 0.5 on ImageNet)


class ReSA(TwinMethod):
    name = "resa"
    Params = ReSAParams

    def __init__(self, ctx: RunContext, params: ReSAParams, data: DataContext):
        super().__init__(ctx, data)
        self.params = params
        self.weak = weak_view(data.image_size, data.mean, data.std)
        self.strong = strong_view(data.image_size, data.mean, data.std, blur_prob=params.blur_prob)

    def view_pipelines(self):
        return [self.weak, self.strong]

    def make_views(self, batch: Batch, rng: StepRandom) -> Views:
        return Views({"weak": batch.view(self.weak, rng.device), "strong": batch.view(self.strong, rng.device)})

    def cluster_terms(self, h_weak, g_weak, g_strong, weak, strong) -> dict[str, torch.Tensor]:
        """Momentum forward on both views and L_cluster against the momentum encodings of all ranks.

        Returns the loss and the momentum embeddings, local ("zm_weak", "zm_strong") and gathered ("*_all")."""
        h_m, zm_weak = self.momentum_embed(weak)
        _, zm_strong = self.momentum_embed(strong)
        out = {"zm_weak": zm_weak, "zm_strong": zm_strong,
               "zm_weak_all": gather_nograd(zm_weak), "zm_strong_all": gather_nograd(zm_strong)}
        p = self.params
        out["loss"] = resa_loss(h_weak, gather_nograd(h_m), self.predict(g_weak), self.predict(g_strong),
                                out["zm_weak_all"], out["zm_strong_all"],
                                temperature=p.temperature, eps=p.sinkhorn_eps, iters=p.sinkhorn_iters)
        return out

    def loss_terms(self, views):
        h_weak, g_weak = self.embed(views.images["weak"])
        _, g_strong = self.embed(views.images["strong"])
        loss = self.cluster_terms(h_weak, g_weak, g_strong, views.images["weak"], views.images["strong"])["loss"]
        return {"loss": loss, "cluster": loss.detach()}, {}
