"""Probing a trained model: features at several depths of the evaluated network, the core's k-NN / linear
evaluation under other labellings, frozen-feature k-NN transfer to other folders (Table 5), and OSESSL's exemplar
neighbours (Figure 4). Only a method's public eval_encoder() / eval_projector() are used for the networks, so any
head layout works."""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..config import TrainConfig
from .datasets import is_streamed, normalization, split_of

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


def frozen_features(encoder: nn.Module, ds, device, workers: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(features [N, D] on the CPU, labels [N]) of every image of `ds` in order, as the core's evaluation takes
    them: a resident set with extract_features and its eval normalisation (float32); a streamed folder with
    stream_features (ImageNet test view at ds.image_size, bf16 autocast on CUDA, stored as float16)."""
    from ..eval import extract_features
    if is_streamed(ds):
        from ..eval.streaming import stream_features
        device = torch.device(device)
        return stream_features(encoder, ds, size=ds.image_size, device=device, amp=device.type == "cuda",
                               dtype=torch.float16, workers=workers)
    mean, std = normalization(ds)
    return extract_features(encoder, ds.images, mean, std, device=device), ds.labels


def knn_transfer(method, root, ks=(5, 10, 20), device="cpu", image_size: int | None = None, train_size: int = 224,
                 dataset: str = "imagefolder", stream: bool | None = None,
                 workers: int | None = None) -> dict[str, Any]:
    """Table 5's frozen-feature transfer: weighted k-NN (cosine, exp(cos / 0.07); eval.knn.knn_accuracies) of the
    evaluated encoder's features on `root`'s test split (val/ if it has no test/), its train split the bank.

    A folder of small images is decoded once and held (resized on load to `image_size` if given); one that streams
    (engine.batches.streams: images > 64 px, the ImageNet sets, or stream=True) is read per batch through the
    ImageNet test view at `image_size`, default `train_size`: the model's training resolution
    (`training_resolution(cfg)` of its run). A k above the number of training images is capped at it
    (`knn_k_cap`). Returns n_train, n_test, classes, streamed, image_size, source and knn<k>_top1 for each k."""
    from dataclasses import replace

    from ..engine.batches import streams
    from ..eval.knn import knn_accuracies
    cfg = TrainConfig(dataset=dataset, data_root=str(root), stream=stream)
    streamed = streams(cfg)
    cfg = replace(cfg, image_size=image_size or (train_size if streamed else None))
    train_set, test_set = split_of(cfg, "train"), split_of(cfg, "test")
    encoder = method.eval_encoder()
    train_f, train_y = frozen_features(encoder, train_set, device, workers)
    test_f, test_y = frozen_features(encoder, test_set, device, workers)
    capped = {int(k): min(int(k), len(train_f)) for k in ks}
    acc = knn_accuracies(train_f, train_y, test_f, test_y, ks=sorted(set(capped.values())), device=device,
                         num_classes=train_set.num_classes)
    out: dict[str, Any] = {"n_train": len(train_set), "n_test": len(test_set), "classes": train_set.num_classes,
                           "streamed": streamed, "image_size": int(test_set.image_size if streamed
                                                                   else test_set.images.shape[-1]),
                           "source": str(train_set.root if streamed else train_set.source)}
    if any(c != k for k, c in capped.items()):
        out["knn_k_cap"] = len(train_f)
    out.update({f"knn{k}_top1": acc[c] for k, c in capped.items()})
    return out


@torch.no_grad()
def exemplar_neighbours(method, pool_images: torch.Tensor, mean, std, device, k: int | None = None,
                        alpha: float | None = None, exemplar_images: torch.Tensor | None = None) -> dict[str, Any]:
    """Eq. 2 neighbours of each exemplar among a pool of images, all embedded by the momentum network (OSESSL).

    The memory bank only stores embeddings, not which image each came from, so to show neighbour images the
    pool is embedded here (eval mode, unaugmented) and ranked with the same discriminative score and the same
    eq. 4 weights as in training. Also returns the prototypes' neighbours in the trained memory bank itself.
    exemplar_images: uint8 [C, 3, S, S] at the pool's size (e.g. `images(train_set, exemplars)` of a streamed run,
    whose method holds its exemplars at the larger crop size); default the method's own exemplar images.
    """
    from ..losses import exemplar_prototypes
    if not all(hasattr(method, a) for a in ("exemplar_images", "memory")):
        raise TypeError(f"{type(method).__name__} has no exemplars and memory bank: Figure 4's neighbours are "
                        "OSESSL's (eq. 2)")
    p = method.params
    k, alpha = k or p.k, p.alpha if alpha is None else alpha
    ex_images = method.exemplar_images.cpu() if exemplar_images is None else exemplar_images
    z_l = momentum_embeddings(method, ex_images, mean, std, device)
    z_pool = momentum_embeddings(method, pool_images, mean, std, device)
    _, weights, neighbours = exemplar_prototypes(z_l, z_pool, k=k, alpha=alpha)
    bank = method.memory
    _, bank_weights, bank_neighbours = exemplar_prototypes(z_l, bank.bank.cpu(), k=k, alpha=alpha,
                                                           valid=bank.valid_mask().cpu())
    return {"pool_neighbours": neighbours, "pool_weights": weights, "bank_neighbours": bank_neighbours,
            "bank_weights": bank_weights, "bank_filled": int(bank.filled), "k": k, "alpha": alpha}
