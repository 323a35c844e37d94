"""Projector and predictor MLPs (ReSA: Linear-BN-ReLU x2, then Linear + affine-free BN; BN-free with GELU for ViTs)."""
from __future__ import annotations

from torch import nn

ACTIVATIONS = {"relu": lambda: nn.ReLU(inplace=True), "gelu": nn.GELU}


def mlp(dims: list[int], last_bn: bool, norm: bool = True, act: str = "relu") -> nn.Sequential:
    """Linear layers through `dims`; each hidden layer gets BN (if `norm`) and `act`; the last gets an affine-free
    BN if `last_bn`. The defaults are the ConvNet MLPs every method has used."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
        last = i == len(dims) - 2
        layers.append(nn.Linear(a, b))
        if not last:
            if norm:
                layers.append(nn.BatchNorm1d(b))
            layers.append(ACTIVATIONS[act]())
        elif last_bn:
            layers.append(nn.BatchNorm1d(b, affine=False))
    return nn.Sequential(*layers)


# ReSA, Appendix B: "when using ConvNets as the encoder, batch normalization (BN) and ReLU activation are
# incorporated into the hidden layers of both the projector and predictor. However, for ViT-based encoders, we draw
# inspiration from DINO (Caron et al., 2021), omitting BN and replacing ReLU with the gaussian error linear units
# (GELU) activation. This modification ensures that ReSA operates as a BN-free system during ViT training" -- so the
# ViT MLPs drop the final BN too. (OSESSL's setup "follows ReSA".)
VIT_MLP = {"last_bn": False, "norm": False, "act": "gelu"}


def build_projector(in_dim: int, hidden: int = 2048, out: int = 512, vit: bool = False) -> nn.Sequential:
    """g(.): in_dim -> hidden -> hidden -> out, final BN without affine parameters (ReSA); BN-free, GELU if vit."""
    dims = [in_dim, hidden, hidden, out]
    return mlp(dims, **VIT_MLP) if vit else mlp(dims, last_bn=True)


def build_predictor(dim: int = 512, hidden: int = 2048, vit: bool = False) -> nn.Sequential:
    """Optional online-only predictor (ReSA's ImageNet default): dim -> hidden -> dim; BN-free, GELU if vit."""
    dims = [dim, hidden, dim]
    return mlp(dims, **VIT_MLP) if vit else mlp(dims, last_bn=False)
