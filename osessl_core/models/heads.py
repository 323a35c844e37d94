"""Projector and predictor MLPs (ReSA: Linear-BN-ReLU x2, then Linear + affine-free BN)."""
from __future__ import annotations

from torch import nn


def mlp(dims: list[int], last_bn: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
        last = i == len(dims) - 2
        layers.append(nn.Linear(a, b))
        if not last:
            layers += [nn.BatchNorm1d(b), nn.ReLU(inplace=True)]
        elif last_bn:
            layers.append(nn.BatchNorm1d(b, affine=False))
    return nn.Sequential(*layers)


def build_projector(in_dim: int, hidden: int = 2048, out: int = 512) -> nn.Sequential:
    """g(.): in_dim -> hidden -> hidden -> out, final BN without affine parameters (ReSA)."""
    return mlp([in_dim, hidden, hidden, out], last_bn=True)


def build_predictor(dim: int = 512, hidden: int = 2048) -> nn.Sequential:
    """Optional online-only predictor (ReSA's ImageNet default): dim -> hidden -> dim."""
    return mlp([dim, hidden, dim], last_bn=False)
