"""ReSA (Weng et al., ICML'25): self-clustering via Sinkhorn on online-vs-momentum encodings (spec section 1)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..data.augment import strong_view, weak_view
from ..distributed import gather_nograd
from ..losses import resa_loss
from .base import DataContext, StepRandom, TwinMethod


@dataclass
class ReSAParams:
    temperature: float = 0.4     # cross-entropy temperature
    sinkhorn_eps: float = 0.05
    sinkhorn_iters: int = 3
    blur_prob: float = 0.0       # strong-view Gaussian blur (0 on CIFAR, 0.5 on ImageNet)


class ReSA(TwinMethod):
    name = "resa"
    Params = ReSAParams

    def __init__(self, cfg, params: ReSAParams, data: DataContext):
        super().__init__(cfg, data)
        self.params = params
        self.weak = weak_view(data.image_size, data.mean, data.std)
        self.strong = strong_view(data.image_size, data.mean, data.std, blur_prob=params.blur_prob)

    def make_views(self, images: torch.Tensor, rng: StepRandom) -> dict[str, torch.Tensor]:
        return {"weak": self.weak(images, rng.device), "strong": self.strong(images, rng.device)}

    def cluster_terms(self, h_weak, g_weak, g_strong, weak, strong):
        """Momentum forward on both views and L_cluster; returns (loss, momentum weak z, momentum strong z)."""
        h_m, zm_weak = self.momentum_embed(weak)
        _, zm_strong = self.momentum_embed(strong)
        p = self.params
        loss = resa_loss(h_weak, gather_nograd(h_m), self.predict(g_weak), self.predict(g_strong),
                         gather_nograd(zm_weak), gather_nograd(zm_strong),
                         temperature=p.temperature, eps=p.sinkhorn_eps, iters=p.sinkhorn_iters)
        return loss, zm_weak, zm_strong

    def loss_terms(self, views):
        h_weak, g_weak = self.embed(views["weak"])
        _, g_strong = self.embed(views["strong"])
        loss, _, _ = self.cluster_terms(h_weak, g_weak, g_strong, views["weak"], views["strong"])
        return {"loss": loss, "cluster": loss.detach()}, {}
