"""Vision Transformers for small images (patch 4: 32x32 -> 8x8 = 64 tokens), on torchvision's VisionTransformer.

Adds what masked image modelling needs (iBOT/SOP): `forward_tokens(x, mask)` returns every token, with the patch
embeddings at masked positions replaced by a learnable [MASK] token before the class token is prepended and the
position embeddings are added. `forward(x)` returns the final (layer-normed) [CLS] feature, so k-NN and linear
evaluation use it like a ResNet's pooled feature. torchvision's blocks have no stochastic depth: the student's
drop-path 0.1 of the iBOT/SOP code is not reproduced.
"""
from __future__ import annotations

import torch
from torch import nn
from torchvision.models.vision_transformer import VisionTransformer

# DeiT/iBOT sizes: (hidden dim, depth, heads); the MLP is 4x wide.
VIT_ARCHITECTURES = {
    "vit_tiny": (192, 12, 3),
    "vit_small": (384, 12, 6),
}


class CifarViT(VisionTransformer):
    def __init__(self, image_size: int = 32, patch_size: int = 4, hidden_dim: int = 192, depth: int = 12,
                 heads: int = 3):
        if image_size % patch_size:
            raise ValueError(f"image size {image_size} is not a multiple of the patch size {patch_size}")
        super().__init__(image_size, patch_size, depth, heads, hidden_dim, mlp_dim=4 * hidden_dim)
        self.heads = nn.Identity()  # no classifier: its parameters would never get a gradient (DDP)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, hidden_dim))  # zero init, as iBOT's masked_embed
        self.out_dim = hidden_dim
        self.grid = image_size // patch_size

    def forward_tokens(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """x: B x 3 x H x W; mask: B x L bool (L = grid^2, row-major), True = masked. Returns B x (1+L) x dim,
        the [CLS] token first."""
        x = self.conv_proj(x).flatten(2).transpose(1, 2)  # B x L x dim
        if mask is not None:
            x = torch.where(mask.unsqueeze(-1), self.mask_token, x)
        x = torch.cat([self.class_token.expand(x.shape[0], -1, -1), x], dim=1)
        return self.encoder(x)  # adds the position embeddings, blocks, final LayerNorm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_tokens(x)[:, 0]


def build_vit(arch: str, image_size: int = 32, depth: int | None = None) -> CifarViT:
    """`depth` overrides the number of blocks (small values for CPU tests)."""
    dim, default_depth, heads = VIT_ARCHITECTURES[arch]
    return CifarViT(image_size, 4, dim, default_depth if depth is None else depth, heads)
