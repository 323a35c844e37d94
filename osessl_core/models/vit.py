"""Vision Transformers on torchvision's VisionTransformer: CIFAR-sized (patch 4: 32x32 -> 8x8 = 64 tokens) and
ViT-S/16 at 224 px (14x14 = 196 tokens, the encoder of the papers' Table 3).

torchvision's class is kept (rather than a ViT written out here) because its conv patch embedding, [CLS] token,
position embedding and `encoder` (blocks + final LayerNorm) are separate attributes: the [CLS] feature and the
masked patch tokens of MIM both come from them without touching its forward.

Adds what masked image modelling needs (iBOT/SOP): `forward_tokens(x, mask)` returns every token, with the patch
embeddings at masked positions replaced by a learnable [MASK] token before the class token is prepended and the
position embeddings are added. `forward(x)` returns the final (layer-normed) [CLS] feature, so k-NN and linear
evaluation use it like a ResNet's pooled feature. torchvision's blocks have no stochastic depth: the student's
drop-path 0.1 of the iBOT/SOP code is not reproduced. The position embedding is sized for `image_size`: inputs of
another size (multi-crop) are not supported.
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torchvision.models.vision_transformer import VisionTransformer

# DeiT/iBOT sizes: (hidden dim, depth, heads, patch); the MLP is 4x wide. patch None = from the stem: 4 px
# ("cifar") or 16 px ("imagenet"); "auto" picks by image size as the ResNet stems do (models/resnet.py).
# "vit_s16" is the canonical name of Table 3's ViT-S/16 (16 px patches at any stem).
VIT_ARCHITECTURES = {
    "vit_tiny": (192, 12, 3, None),
    "vit_small": (384, 12, 6, None),
    "vit_s16": (384, 12, 6, 16),
}
PATCH_OF_STEM = {"cifar": 4, "imagenet": 16}
AUTO_IMAGENET_FROM = 64  # px: the ImageNet stem (ResNet) / 16 px patches (ViT) from this image size up
# MoCo v3's vit_small has 12 heads where DeiT/DINO's has 6 (same parameter count).
MOCOV3_HEADS = {384: 12}
VIT_RECIPES = ("torchvision", "mocov3")


def is_vit(arch: str) -> bool:
    return arch in VIT_ARCHITECTURES


def resolve_stem(stem: str, image_size: int) -> str:
    if stem not in ("auto", "cifar", "imagenet"):
        raise ValueError(f"unknown stem {stem!r}; choose auto, cifar or imagenet")
    if stem == "auto":
        return "imagenet" if image_size >= AUTO_IMAGENET_FROM else "cifar"
    return stem


class CifarViT(VisionTransformer):
    """The project's ViT (the name is historical: it serves 224 px ViT-S/16 too)."""

    def __init__(self, image_size: int = 32, patch_size: int = 4, hidden_dim: int = 192, depth: int = 12,
                 heads: int = 3):
        if image_size % patch_size:
            raise ValueError(f"image size {image_size} is not a multiple of the patch size {patch_size}")
        super().__init__(image_size, patch_size, depth, heads, hidden_dim, mlp_dim=4 * hidden_dim)
        self.heads = nn.Identity()  # no classifier: its parameters would never get a gradient (DDP)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, hidden_dim))  # zero init, as iBOT's masked_embed
        self.out_dim = hidden_dim
        self.grid = image_size // patch_size

    def embed(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """The encoder's input: [CLS] + (masked) patch embeddings, B x (1+L) x dim, before position embeddings."""
        x = self.conv_proj(x).flatten(2).transpose(1, 2)  # B x L x dim
        if mask is not None:
            x = torch.where(mask.unsqueeze(-1), self.mask_token, x)
        return torch.cat([self.class_token.expand(x.shape[0], -1, -1), x], dim=1)

    def forward_tokens(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """x: B x 3 x H x W; mask: B x L bool (L = grid^2, row-major), True = masked. Returns B x (1+L) x dim,
        the [CLS] token first."""
        return self.encoder(self.embed(x, mask))  # adds the position embeddings, blocks, final LayerNorm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_tokens(x)[:, 0]

    def cls_last_layers(self, x: torch.Tensor, n: int = 4) -> torch.Tensor:
        """The final-LayerNormed [CLS] of each of the last `n` blocks, concatenated: B x n*dim. ReSA's ViT linear
        probe (after DINO): "concatenating the [CLS] tokens from the last four layers". n=1 equals forward(x)."""
        enc = self.encoder
        h = enc.dropout(self.embed(x) + enc.pos_embedding)
        outs = []
        for i, block in enumerate(enc.layers):
            h = block(h)
            if i >= len(enc.layers) - n:
                outs.append(enc.ln(h)[:, 0])
        return torch.cat(outs, dim=1)

    @torch.no_grad()
    def mocov3_init_(self) -> "CifarViT":
        """MoCo v3's ViT design and initialisation, which ReSA says it adopts ("we adopt the ViT design and
        initialization approach of MoCoV3 for ReSA"): a fixed 2-D sin-cos position embedding (zero for [CLS]),
        Xavier-uniform Linear weights with q, k and v each treated as its own matrix, a Xavier-uniform patch
        embedding, zero biases and a [CLS] token drawn with std 1e-6. The patch embedding is left trainable
        (MoCo v3's optional stop-gradient is not applied)."""
        dim = self.hidden_dim
        self.encoder.pos_embedding.copy_(sincos_position_embedding(self.grid, dim).unsqueeze(0))
        self.encoder.pos_embedding.requires_grad_(False)
        for m in self.modules():
            if isinstance(m, nn.MultiheadAttention):
                bound = math.sqrt(6.0 / (dim + dim))  # per q/k/v block of the joint 3*dim x dim matrix
                nn.init.uniform_(m.in_proj_weight, -bound, bound)
                nn.init.zeros_(m.in_proj_bias)
            elif isinstance(m, nn.Linear):  # MLP and attention output projections
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        w = self.conv_proj.weight
        bound = math.sqrt(6.0 / (w[0].numel() + dim))
        nn.init.uniform_(w, -bound, bound)
        nn.init.zeros_(self.conv_proj.bias)
        nn.init.normal_(self.class_token, std=1e-6)
        return self


def sincos_position_embedding(grid: int, dim: int, temperature: float = 10000.0) -> torch.Tensor:
    """(1 + grid^2) x dim: a zero row for [CLS], then for the patch at (row r, column c), row-major like the
    patch tokens, [sin(c w), cos(c w), sin(r w), cos(r w)] with dim/4 frequencies w."""
    if dim % 4:
        raise ValueError(f"a 2-D sin-cos embedding needs a dim divisible by 4, not {dim}")
    omega = 1.0 / temperature ** (torch.arange(dim // 4, dtype=torch.float64) / (dim // 4))
    r, c = torch.meshgrid(torch.arange(grid, dtype=torch.float64), torch.arange(grid, dtype=torch.float64),
                          indexing="ij")
    cw, rw = c.flatten()[:, None] * omega, r.flatten()[:, None] * omega
    patches = torch.cat([cw.sin(), cw.cos(), rw.sin(), rw.cos()], dim=1)
    return torch.cat([torch.zeros(1, dim, dtype=torch.float64), patches]).float()


def build_vit(arch: str, image_size: int = 32, depth: int | None = None, stem: str = "auto",
              recipe: str = "torchvision") -> CifarViT:
    """`depth` overrides the number of blocks (small values for CPU tests). `recipe`: "torchvision" (its init,
    a learned position embedding, DeiT's heads) or "mocov3" (MoCo v3's heads, fixed sin-cos position embedding
    and init; see CifarViT.mocov3_init_)."""
    if recipe not in VIT_RECIPES:
        raise ValueError(f"unknown ViT recipe {recipe!r}; choose one of {VIT_RECIPES}")
    dim, default_depth, heads, patch = VIT_ARCHITECTURES[arch]
    if patch is None:
        patch = PATCH_OF_STEM[resolve_stem(stem, image_size)]
    elif stem == "cifar":
        raise ValueError(f"{arch} has {patch} px patches; for the CIFAR stem (4 px patches) use vit_small")
    else:
        resolve_stem(stem, image_size)  # validates the name
    if recipe == "mocov3":
        heads = MOCOV3_HEADS.get(dim, heads)
    vit = CifarViT(image_size, patch, dim, default_depth if depth is None else depth, heads)
    return vit.mocov3_init_() if recipe == "mocov3" else vit
