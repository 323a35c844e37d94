"""Probing a trained model: features at several depths of the evaluated network, the core's k-NN / linear
evaluation under other labellings, and OSESSL's exemplar neighbours (Figure 4). Only a method's public
eval_encoder() / eval_projector() are used for the networks, so any head layout works."""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..config import TrainConfig

# Element-wise non-linearities: each one closes a hidden layer of a projection head (Linear [-norm] -activation).
ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.GELU, nn.SiLU, nn.Mish, nn.ELU, nn.SELU, nn.CELU,
               nn.Tanh, nn.Sigmoid, nn.Hardswish, nn.Hardtanh, nn.Softplus)


def _flat(module: nn.Module) -> list[nn.Module]:
    """The modules a Sequential applies in order, nested Sequentials opened (other modules are kept whole)."""
    return [leaf for m in module for leaf in (_flat(m) if isinstance(m, nn.Sequential) else [m])]


def projector_hidden(method, layers: int = 1) -> nn.Sequential:
    """The first `layers` hidden layers of the evaluated projection head: its modules up to and including the
    `layers`-th activation (ReSA's first hidden layer is Linear-BN-ReLU). Found by module type, not position."""
    head = method.eval_projector()
    if not isinstance(head, nn.Sequential):
        raise TypeError(f"{type(method).__name__}.eval_projector() is a {type(head).__name__}, not an nn.Sequential: "
                        "its hidden layers cannot be cut out")
    modules = _flat(head)
    ends = [i for i, m in enumerate(modules) if isinstance(m, ACTIVATIONS)]
    if not 0 <= layers <= len(ends):
        raise ValueError(f"{type(method).__name__}'s projection head has {len(ends)} hidden layer(s) "
                         f"({', '.join(type(m).__name__ for m in modules)}); asked for {layers}")
    return nn.Sequential(*modules[:ends[layers - 1] + 1] if layers else [])


def eval_network(method, projector: nn.Module | None = None) -> nn.Module:
    """The evaluated encoder (the momentum encoder for ReSA/OSESSL), followed by `projector` if given (the whole
    eval_projector() or a part of it)."""
    enc = method.eval_encoder()
    return enc if projector is None else nn.Sequential(enc, projector)


def representations(method, images: torch.Tensor, mean, std, device, hidden_layer: int = 1) -> dict[str, torch.Tensor]:
    """Eval-mode features of `images` at three depths (ReSA's clustering analysis): the encoder output, the
    projector's hidden layer number `hidden_layer` (default: the first) and the projector output (before L2
    normalisation)."""
    from ..eval import extract_features
    nets = {"encoder": eval_network(method),
            "projector_hidden": eval_network(method, projector_hidden(method, hidden_layer)),
            "projector": eval_network(method, method.eval_projector())}
    return {name: extract_features(net, images, mean, std, device=device) for name, net in nets.items()}


def momentum_embeddings(method, images: torch.Tensor, mean, std, device) -> torch.Tensor:
    """L2-normalised momentum embeddings z' = normalize(g'(e'(x))), eval-mode BN, unaugmented images."""
    from ..eval import extract_features
    net = eval_network(method, method.eval_projector())
    return F.normalize(extract_features(net, images, mean, std, device=device), dim=1)


def evaluate(method, cfg: TrainConfig, train_set, device, test_set=None) -> dict[str, Any]:
    """The core's evaluation of a trained method (k-NN and/or linear probe on eval_encoder() features, as
    `cfg.eval_knn` / `cfg.eval_linear` say); the test split of cfg's dataset unless `test_set` is given."""
    from ..engine.evaluate import evaluate_run
    return evaluate_run(method, cfg, train_set, device, test_set)


def evaluate_views(method, cfg: TrainConfig, views: dict[str, tuple], device) -> dict[str, Any]:
    """`evaluate` of the same trained model under several labellings: views = {prefix: (train_set, test_set)}.
    Returns {prefix_knn_top1: ..., prefix_linear_top1: ..., prefix_classes: ...}."""
    out = {}
    for prefix, (train_set, test_set) in views.items():
        ev = evaluate(method, cfg, train_set, device, test_set)
        out.update({f"{prefix}_{k}": ev[k] for k in ("knn_top1", "linear_top1", "linear_top5") if k in ev})
        out[f"{prefix}_classes"] = train_set.num_classes
    return out


@torch.no_grad()
def exemplar_neighbours(method, pool_images: torch.Tensor, mean, std, device, k: int | None = None,
                        alpha: float | None = None) -> dict[str, Any]:
    """Eq. 2 neighbours of each exemplar among a pool of images, all embedded by the momentum network (OSESSL).

    The memory bank only stores embeddings, not which image each came from, so to show neighbour images the
    pool is embedded here (eval mode, unaugmented) and ranked with the same discriminative score and the same
    eq. 4 weights as in training. Also returns the prototypes' neighbours in the trained memory bank itself.
    """
    from ..losses import exemplar_prototypes
    if not all(hasattr(method, a) for a in ("exemplar_images", "memory")):
        raise TypeError(f"{type(method).__name__} has no exemplars and memory bank: Figure 4's neighbours are "
                        "OSESSL's (eq. 2)")
    p = method.params
    k, alpha = k or p.k, p.alpha if alpha is None else alpha
    z_l = momentum_embeddings(method, method.exemplar_images.cpu(), mean, std, device)
    z_pool = momentum_embeddings(method, pool_images, mean, std, device)
    _, weights, neighbours = exemplar_prototypes(z_l, z_pool, k=k, alpha=alpha)
    bank = method.memory
    _, bank_weights, bank_neighbours = exemplar_prototypes(z_l, bank.bank.cpu(), k=k, alpha=alpha,
                                                           valid=bank.valid_mask().cpu())
    return {"pool_neighbours": neighbours, "pool_weights": weights, "bank_neighbours": bank_neighbours,
            "bank_weights": bank_weights, "bank_filled": int(bank.filled), "k": k, "alpha": alpha}
