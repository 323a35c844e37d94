"""DINO (Caron et al., ICCV'21): self-distillation from a momentum teacher with centering and sharpening.

Student and teacher are encoder + DINO head: an MLP (Linear-BN-GELU-Linear-BN-GELU-Linear, truncated-normal
init std 0.02), an L2-normalised bottleneck, and a weight-normalised bias-free last layer to K prototypes whose
norm g is fixed to 1 (`norm_last_layer`, the official and solo-learn default). The teacher is the EMA of the
student (parameters only; it uses batch statistics, like every teacher here). Loss, both views through both
networks: 1/2 [H(P_t(x_1), P_s(x_2)) + H(P_t(x_2), P_s(x_1))], P_t = softmax((g_t - c) / tau_t),
P_s = softmax(g_s / tau_s).
- The center c is a persistent buffer, updated after the step (`after_step`) with c <- 0.9 c + 0.1 mean of the
  teacher outputs of both views over the global batch (all-reduced), as the official code does after the loss.
- tau_t warms up linearly over epochs, linspace(0.04, 0.07, 30)[epoch] then 0.07 (the paper's schedule, as in the
  official code and lightly), as a pure function of the step: `begin_step` writes it into a 0-d buffer that the
  compiled loss reads (no recompilation). solo-learn's CIFAR config leaves the warm-up at 0 epochs (tau_t = 0.07
  throughout): `-m warmup_teacher_temp_epochs=0`.
- The last layer is frozen for the first epoch (`freeze_last_layer`, official and solo-learn default 1): its
  gradient is gated by a 0/1 buffer (the forward value is exact). The trainer's weight decay still applies to it,
  which moves only the direction-free norm of v (g is fixed).
- The prototype logits (normalised bottleneck x weight-normalised layer) are computed in full precision: they
  enter exp(. / 0.04).
- **BN in the head's hidden layers by default** (`use_bn_in_head`, the official code's option; its and
  solo-learn's default is off), as for SOP here: under the trainer's SGD the BN-free head (init std 0.02) is
  dominated by its biases after the first step, every image gets the same teacher output and centering makes it
  uniform. Measured on the CPU test network (width 8, batch 32, lr 2.0 x 32/256): the teacher logits' spread
  over the batch fell from 0.07 to 1e-4 after one step and the loss rose above log K within 20 steps; with BN
  the spread stays ~0.1 and the loss falls over the first 8 steps. Even with BN that tiny run drifts towards a
  uniform teacher after ~10 steps (teacher entropy up, student-teacher KL down); nothing is measured at scale.

CIFAR recipe: solo-learn's scripts/pretrain/cifar/dino.yaml (vturrisi/solo-learn 9187ea3) and its DINO
defaults: K = 4096 prototypes, bottleneck 256, hidden 2048, tau_s 0.1, no BN in the head (here: BN, above), no
gradient clipping, EMA 0.9995 -> 1. Deviations: the momentum is the trainer's cosine schedule from TrainConfig.momentum_base (0.996 -> 1,
the paper's; solo-learn's CIFAR 0.9995 is `--momentum-base 0.9995`); the MLP widths are the shared
ctx.proj_hidden / ctx.proj_out (bottleneck 512 by default instead of 256); no multi-crop (solo-learn's CIFAR
config has two 32 px crops too); each view is its own forward, so BN in the encoder sees one view's batch
(the official code concatenates the crops); and, as for every rival, the trainer's SGD (lr 0.3 x B/256,
momentum 0.9, wd 1e-4, warm-up + cosine) instead of LARS (solo-learn: lr 0.3, wd 1e-6) or AdamW with the
paper's weight-decay schedule, and the project's strong augmentation for both views instead of solo-learn's
asymmetric pipeline (solarisation 0.2 on one view). The evaluated network is the teacher encoder, as in the
paper.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..data.augment import strong_view
from ..losses import dino_center_update, dino_loss, teacher_temperature
from ..losses.common import full_precision
from ..models import momentum_copy
from .base import Batch, DataContext, Method, RunContext, StepRandom, Views
from .two_view import paired_views


@dataclass
class DINOParams:
    num_prototypes: int = 4096          # K, solo-learn cifar/dino.yaml
    student_temp: float = 0.1           # paper; solo-learn default
    teacher_temp: float = 0.07          # final tau_t: paper's warm-up target; solo-learn default
    warmup_teacher_temp: float = 0.04   # paper; official and solo-learn default
    warmup_teacher_temp_epochs: int = 30  # paper (solo-learn's CIFAR default is 0)
    center_momentum: float = 0.9        # paper; official, solo-learn and lightly default
    norm_last_layer: bool = True        # g fixed to 1; official and solo-learn default
    freeze_last_layer: int = 1          # epochs; official and solo-learn default
    use_bn_in_head: bool = True         # official/solo-learn default False: see the module docstring


@full_precision
def prototype_logits(x: torch.Tensor, v: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """normalize(x) @ (g v / ||v||)^T: the weight-normalised last layer (torch's weight_norm, dim 0)."""
    return F.normalize(x, dim=-1) @ (g * v / v.norm(dim=1, keepdim=True)).T


class DINOHead(nn.Module):
    def __init__(self, in_dim: int, hidden: int, bottleneck: int, num_prototypes: int, use_bn: bool,
                 norm_last_layer: bool):
        super().__init__()
        layers: list[nn.Module] = []
        for a, b in ((in_dim, hidden), (hidden, hidden)):
            layers += [nn.Linear(a, b)] + ([nn.BatchNorm1d(b)] if use_bn else []) + [nn.GELU()]
        layers.append(nn.Linear(hidden, bottleneck))
        self.mlp = nn.Sequential(*layers)
        for m in self.mlp:
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        # weight_v starts as nn.Linear's default init, weight_g at 1 (DINO fills it after weight_norm).
        self.weight_v = nn.Parameter(nn.Linear(bottleneck, num_prototypes, bias=False).weight.detach().clone())
        self.weight_g = nn.Parameter(torch.ones(num_prototypes, 1), requires_grad=not norm_last_layer)

    def forward(self, x: torch.Tensor, last_layer_grad: torch.Tensor | None = None) -> torch.Tensor:
        v, g = self.weight_v, self.weight_g
        if last_layer_grad is not None:  # value unchanged; gradient scaled by the 0/1 gate
            v = v.detach() + last_layer_grad * (v - v.detach())
            g = g.detach() + last_layer_grad * (g - g.detach())
        return prototype_logits(self.mlp(x), v, g)


class DINO(Method):
    name = "dino"
    Params = DINOParams

    def __init__(self, ctx: RunContext, params: DINOParams, data: DataContext):
        super().__init__()
        self.params = p = params
        if p.num_prototypes < 1 or min(p.student_temp, p.teacher_temp, p.warmup_teacher_temp) <= 0:
            raise ValueError("num_prototypes must be >= 1 and every temperature > 0")
        if not 0 <= p.center_momentum < 1 or p.warmup_teacher_temp_epochs < 0 or p.freeze_last_layer < 0:
            raise ValueError("center_momentum must lie in [0, 1); warm-up and freeze epochs must be >= 0")
        self.encoder = ctx.encoder()
        self.head = DINOHead(self.encoder.out_dim, ctx.proj_hidden, ctx.proj_out, p.num_prototypes,
                             p.use_bn_in_head, p.norm_last_layer)
        self.teacher_encoder = momentum_copy(self.encoder)
        self.teacher_head = momentum_copy(self.head)
        self.augment = strong_view(data.image_size, data.mean, data.std)
        self.register_buffer("center", torch.zeros(1, p.num_prototypes))
        # Step-dependent, set by begin_step (derived from the step: not saved).
        self.register_buffer("tau_t", torch.tensor(p.warmup_teacher_temp), persistent=False)
        self.register_buffer("last_layer_grad", torch.zeros(()), persistent=False)

    def begin_step(self, step: int, steps_per_epoch: int) -> None:
        p, epoch = self.params, step // steps_per_epoch
        self.tau_t.fill_(teacher_temperature(epoch, p.warmup_teacher_temp, p.teacher_temp,
                                          p.warmup_teacher_temp_epochs))
        self.last_layer_grad.fill_(0.0 if epoch < p.freeze_last_layer else 1.0)

    def view_pipelines(self):
        return [self.augment, self.augment]

    def make_views(self, batch: Batch, rng: StepRandom) -> Views:
        return paired_views(batch, self.augment, rng)

    def momentum_pairs(self):
        return [(self.encoder, self.teacher_encoder), (self.head, self.teacher_head)]

    def student(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x), self.last_layer_grad)

    @torch.no_grad()
    def teacher(self, x: torch.Tensor) -> torch.Tensor:
        return self.teacher_head(self.teacher_encoder(x))

    def loss_terms(self, views):
        p = self.params
        t1, t2 = self.teacher(views.images["view1"]), self.teacher(views.images["view2"])
        loss = dino_loss(self.student(views.images["view1"]), self.student(views.images["view2"]), t1, t2, self.center,
                         self.tau_t, p.student_temp)
        return {"loss": loss, "dino": loss.detach()}, {"teacher": torch.cat([t1, t2])}

    def after_step(self, views, updates) -> None:
        self.center.copy_(dino_center_update(self.center, updates["teacher"], self.params.center_momentum))

    def eval_encoder(self) -> nn.Module:
        return self.teacher_encoder

    def eval_projector(self) -> nn.Sequential:
        return self.teacher_head.mlp
