"""SOP: Self-Organizing Visual Prototypes (Silva, Pedrini, Ramirez Rivera, ICML'25).

Decisions: docs/decisions.md#sop.

Student = encoder + head (in -> proj_hidden -> proj_hidden -> proj_out, GELU, BN in the hidden layers unless
`head_bn=False`, L2-normalised; the code's iBOTHead, shared by all tokens); teacher = its EMA (the trainer's cosine
schedule, 0.996 -> 1). Both see the two global views (the project's strong view for both,
docs/decisions.md#d-sop-8); the encoder is a CIFAR ResNet (CLS-only) or a ViT (models/vit.py).
L = lambda_cls L_CLS + lambda_patch L_patch:
* L_CLS (eq. 2): SOPs of K random anchors + their k nearest neighbours from the [CLS] memory E_C, `num_tasks`
  independent draws per step, averaged.
* L_patch (eq. 4, SOP-MIM, ViT only): the student sees BEiT blockwise-masked views (a learnable [MASK] token; its
  [CLS] comes from the same masked forward, as in the code); single-anchor SOPs from the patch memory E_P.
After each step E_C receives the teacher [CLS] embedding of global view 2 and E_P one random teacher patch token
per image of view 2 (FIFO, all ranks). Anchors are redrawn every step: fixed anchors collapse (paper Table C.7).

Deviations: the optimiser is the trainer's SGD, shared by every method (the code uses AdamW 5e-4 B/256, weight
decay 0.04 -> 0.4, clipping 3.0); no drop-path (torchvision's ViT blocks have none); no multi-crop; the code's
"low_energy" anchor halving is skipped: it keeps a uniformly random half (docs/decisions.md#d-sop-3), so
`anchors` is the effective K directly. Watch the BN-free head with SGD: on CIFAR its initial embeddings are nearly
collinear (ResNet: pairwise cosine ~0.8-0.9), so the SOP targets start near uniform (loss ~ log K); see
tests/test_sop.py.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..data.augment import strong_view
from ..data.masking import MASK_UNIFORMS, block_masks
from ..losses import sop_cls_term, sop_patch_term
from ..memory import MemoryBank
from ..models import CifarViT, build_encoder, momentum_copy
from .base import Batch, DataContext, Method, RunContext, StepRandom, Views


@dataclass
class SOPParams:
    memory_size: int = 16384          # N_C on CIFAR (ImageNet 65536; docs/decisions.md#d-sop-5)
    anchors: int | None = None        # K per task; None = memory_size // 16 (the paper's ratio, 1024 at 16384)
    k: int = 8                        # support embeddings per anchor (the SOP has k + 1 members)
    num_tasks: int = 4                # independent SOP draws per step for L_CLS
    smoothing: float = 0.1            # epsilon: the anchor's own score is 1 - epsilon
    tau_s: float = 0.1
    tau_t: float = 0.04               # constant (the code's warm-up goes 0.04 -> 0.04)
    lambda_cls: float = 1.0
    lambda_patch: float | None = None  # None = 1 with a ViT, 0 with a ResNet (no patch tokens)
    patch_memory_size: int = 8192     # N_P
    patch_anchors: int | None = None  # K-dot per task; None = patch_memory_size // 16 (512 at 8192)
    patch_tasks: int = 1
    pred_ratio: float = 0.3           # BEiT blockwise masking, block aspect ratio in (0.3, 1/0.3)
    blur_prob: float = 0.0            # Gaussian blur of the views (dropped at 32 px, docs/decisions.md#d-sop-8)
    vit_depth: int | None = None      # override the ViT's 12 blocks (CPU tests)
    # BatchNorm in the head's hidden layers (the code's use_bn; docs/decisions.md#d-sop-6). On by default, unlike
    # the code: with the BN-free head and the shared SGD recipe, the initial embeddings are nearly parallel
    # (cosine ~0.85), the SOP targets stay uniform and training stalls at log K (3-epoch H100 run: loss 6.8, memory
    # cosine 0.93, 5-NN 36 %; every tiny CPU run likewise). With BN the embeddings start spread out (~0.15).
    head_bn: bool = True


def sop_head(in_dim: int, hidden: int, out: int, bn: bool = False) -> nn.Sequential:
    """iBOTHead(nlayers=3): Linear-[BN]-GELU-Linear-[BN]-GELU-Linear, trunc-normal(0.02) weights, zero bias."""
    norm = (lambda: nn.BatchNorm1d(hidden)) if bn else nn.Identity
    head = nn.Sequential(nn.Linear(in_dim, hidden), norm(), nn.GELU(), nn.Linear(hidden, hidden), norm(), nn.GELU(),
                         nn.Linear(hidden, out))
    for m in head:
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            nn.init.zeros_(m.bias)
    return head


def random_unit_memory(size: int, dim: int) -> MemoryBank:
    """The shared FIFO MemoryBank (all-rank enqueue, persistent buffers), filled with random unit vectors as SOP's
    memories start (docs/decisions.md#d-sop-5): every slot is a valid SOP member from step 0 and the first writes
    replace them."""
    memory = MemoryBank(size, dim)
    with torch.no_grad():
        memory.bank.copy_(F.normalize(torch.randn(size, dim), dim=1))
        memory.filled.fill_(size)
    return memory


def _anchor_count(value: int | None, size: int, k: int, what: str) -> int:
    count = size // 16 if value is None else value
    if count < 2 or count + k > size:
        raise ValueError(f"SOP {what}: needs 2 <= anchors and anchors + k <= memory size, got anchors={count}, "
                         f"k={k}, memory size={size}; raise the memory size or set the anchor count")
    return count


class SOP(Method):
    name = "sop"
    Params = SOPParams

    def __init__(self, ctx: RunContext, params: SOPParams, data: DataContext):
        super().__init__()
        p = self.params = params
        self.ctx = ctx
        self.encoder = build_encoder(ctx.arch, ctx.width, ctx.zero_pad, image_size=ctx.image_size,
                                     vit_depth=p.vit_depth, stem=ctx.stem)
        vit = isinstance(self.encoder, CifarViT)
        self.lambda_patch = (1.0 if vit else 0.0) if p.lambda_patch is None else p.lambda_patch
        if self.lambda_patch and not vit:
            raise ValueError(f"SOP-MIM (lambda_patch={self.lambda_patch}) needs patch tokens: use a ViT arch "
                             f"or lambda_patch=0 with {ctx.arch!r}")
        self.mim = self.lambda_patch > 0
        if vit and not self.mim:  # never used, so frozen: DDP needs a gradient for every trainable parameter
            self.encoder.mask_token.requires_grad_(False)
        self.head = sop_head(self.encoder.out_dim, ctx.proj_hidden, ctx.proj_out, p.head_bn)
        self.teacher_encoder = momentum_copy(self.encoder)
        self.teacher_head = momentum_copy(self.head)
        self.num_anchors = _anchor_count(p.anchors, p.memory_size, p.k, "memory_size")
        self.memory = random_unit_memory(p.memory_size, ctx.proj_out)
        if self.mim:
            self.num_patch_anchors = _anchor_count(p.patch_anchors, p.patch_memory_size, 0, "patch_memory_size")
            self.patch_memory = random_unit_memory(p.patch_memory_size, ctx.proj_out)
        self.view = strong_view(data.image_size, data.mean, data.std, blur_prob=p.blur_prob)

    def view_pipelines(self):
        return [self.view, self.view]

    def make_views(self, batch: Batch, rng: StepRandom) -> Views:
        # Per-sample randomness is drawn for the global batch and this rank's rows kept (see ReSA); anchor
        # permutations are global, so every rank builds the same SOPs from its identical memory.
        p, dev, g = self.params, batch.device, rng.device
        total, rows = self.ctx.global_batch, slice(self.ctx.offset, self.ctx.offset + batch.size)

        def permutations(size: int, tasks: int) -> torch.Tensor:  # one row per task; its first K entries: anchors
            return torch.stack([torch.randperm(size, generator=g, device=dev) for _ in range(tasks)])

        views = Views({"global": torch.cat([batch.view(self.view, g) for _ in range(2)])},
                      {"anchors": permutations(p.memory_size, p.num_tasks)})
        if self.mim:
            # The masks themselves are computed in loss_terms (compiled) from these uniforms; rows view-major.
            views.draws["mask_u"] = torch.cat([torch.rand(total, MASK_UNIFORMS, generator=g, device=dev)[rows]
                                         for _ in range(2)])
            views.draws["patch_anchors"] = permutations(p.patch_memory_size, p.patch_tasks)
            views.draws["patch_pos"] = torch.randint(self.encoder.grid ** 2, (total,), generator=g, device=dev)[rows]
        return views

    def momentum_pairs(self):
        return [(self.encoder, self.teacher_encoder), (self.head, self.teacher_head)]

    def _embed(self, encoder: nn.Module, head: nn.Module, x: torch.Tensor, mask: torch.Tensor | None = None):
        """Normalised head outputs: [CLS] (N x d) and, with MIM, the patch tokens (N x L x d)."""
        if not self.mim:
            return F.normalize(head(encoder(x)), dim=-1, eps=1e-6), None
        tokens = encoder.forward_tokens(x, mask)
        z = F.normalize(head(tokens.flatten(0, 1)), dim=-1, eps=1e-6).view(*tokens.shape[:2], -1)  # BN sees 2-D
        return z[:, 0], z[:, 1:]

    def loss_terms(self, views):
        p = self.params
        x = views.images["global"]
        n = x.shape[0] // 2
        mask = block_masks(views.draws["mask_u"], self.encoder.grid, p.pred_ratio) if self.mim else None
        s_cls, s_patch = self._embed(self.encoder, self.head, x, mask)
        with torch.no_grad():  # the teacher sees both views unmasked
            t_cls, t_patch = self._embed(self.teacher_encoder, self.teacher_head, x)
        l_cls = sop_cls_term(s_cls.view(2, n, -1), t_cls.view(2, n, -1), self.memory.bank, views.draws["anchors"],
                             self.num_anchors, p.k, p.smoothing, p.tau_s, p.tau_t)
        terms = {"cls": l_cls.detach()}
        updates = {"cls": t_cls[n:]}
        loss = p.lambda_cls * l_cls
        if self.mim:
            L = s_patch.shape[1]
            l_patch = sop_patch_term(s_patch.view(2, n, L, -1), t_patch.view(2, n, L, -1), mask.view(2, n, L),
                                     self.patch_memory.bank, views.draws["patch_anchors"], self.num_patch_anchors,
                                     p.smoothing, p.tau_s, p.tau_t)
            loss = loss + self.lambda_patch * l_patch
            terms["patch"] = l_patch.detach()
            updates["patch"] = t_patch[n:][torch.arange(n, device=x.device), views.draws["patch_pos"]]
        return {"loss": loss, **terms}, updates

    def after_step(self, views, updates) -> None:
        # The memories never contain the current batch when its loss is computed (the code enqueues after the loss).
        self.memory.enqueue(updates["cls"])
        if self.mim:
            self.patch_memory.enqueue(updates["patch"])

    def eval_encoder(self) -> nn.Module:
        # The teacher, as in DINO/iBOT/SOP evaluation and the project's momentum-encoder protocol.
        return self.teacher_encoder

    def eval_projector(self) -> nn.Sequential:
        return self.teacher_head
