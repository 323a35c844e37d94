"""Take an encoder away: a run's evaluated network as a plain torchvision `state_dict`, plus a JSON card.

`export_encoder(run_dir, out)` writes `out` (a state_dict with the key names of `torchvision.models.resnet18/50`,
no `fc`) and `out` with suffix `.json` (method, dataset, epochs, k-NN/linear accuracy, git SHA, sha256 of the
weights, and the stem). The CIFAR stem is not torchvision's: conv1 is 3x3 with stride 1 and there is no max-pool;
ReSA's 34x34 zero pad before conv1 equals a conv1 padding of 2 (the pad adds zeros, as the conv's own padding
does), so `build_torchvision_resnet` builds the exact network from torchvision's constructor with those two
modules swapped. `hubconf.py` exposes it to `torch.hub.load`. This is also the path detection/segmentation
transfer would load backbones from.
"""
from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .files import atomic_write_bytes, atomic_write_json
from .provenance import provenance

CARD_FORMAT = 1


def torchvision_key(name: str) -> str:
    """Our CifarResNet key -> torchvision's: the shortcut is torchvision's `downsample`."""
    return re.sub(r"\.shortcut\.", ".downsample.", name)


def stem_of(encoder: nn.Module) -> dict[str, Any]:
    """The stem of one of our ResNets: the CIFAR one (optional zero pad, no max-pool) or torchvision's own."""
    conv = encoder.conv1
    pad = getattr(encoder, "pad", None)  # the ImageNet-stem encoders are torchvision's ResNet: no pad attribute
    padding = conv.padding[0] + (1 if isinstance(pad, nn.ZeroPad2d) else 0)
    maxpool = isinstance(getattr(encoder, "maxpool", None), nn.MaxPool2d)
    return {"conv1_kernel_size": conv.kernel_size[0], "conv1_stride": conv.stride[0], "conv1_padding": padding,
            "maxpool": maxpool, "width": conv.out_channels}


def build_torchvision_resnet(arch: str, stem: dict[str, Any] | None = None) -> nn.Module:
    """torchvision's `arch` (resnet18 | resnet50) as a feature extractor (fc = Identity), with `stem` applied
    (default: the CIFAR stem of this project's runs, with ReSA's zero pad)."""
    import torchvision
    stem = stem or {"conv1_kernel_size": 3, "conv1_stride": 1, "conv1_padding": 2, "maxpool": False, "width": 64}
    if arch not in ("resnet18", "resnet50"):
        raise ValueError(f"no torchvision constructor for arch {arch!r}; exportable: resnet18, resnet50")
    if stem["width"] != 64:
        raise ValueError(f"torchvision's {arch} is 64 channels wide; this encoder is {stem['width']} wide")
    model = getattr(torchvision.models, arch)(weights=None)
    k, s, p = stem["conv1_kernel_size"], stem["conv1_stride"], stem["conv1_padding"]
    model.conv1 = nn.Conv2d(3, 64, k, s, p, bias=False)
    if not stem["maxpool"]:
        model.maxpool = nn.Identity()
    model.fc = nn.Identity()
    return model


def export_encoder(run_dir: str | Path, out: str | Path) -> dict[str, Any]:
    """Write the run's evaluated encoder and its card; return the card."""
    from .engine.evaluate import evaluated_network
    from .engine.trainer import load_run
    run_dir, out = Path(run_dir), Path(out)
    trainer = load_run(run_dir, device="cpu")
    encoder = trainer.method.eval_encoder()
    cfg = trainer.cfg
    if not hasattr(encoder, "layer4"):
        raise ValueError(f"export writes torchvision ResNets; run {run_dir} trained a {cfg.arch}")
    stem = stem_of(encoder)
    build_torchvision_resnet(cfg.arch, stem)  # refuses what torchvision cannot hold (e.g. a narrow width)
    state = {torchvision_key(k): v.detach().cpu().clone() for k, v in encoder.state_dict().items()}
    atomic_write_bytes(out, lambda f: torch.save(state, f))
    evaluation = json.loads((run_dir / "eval.json").read_text()) if (run_dir / "eval.json").exists() else {}
    card = {
        "format": CARD_FORMAT, "weights": out.name, "sha256": hashlib.sha256(out.read_bytes()).hexdigest(),
        "torchvision_constructor": cfg.arch, "stem": stem, "feature_dim": encoder.out_dim,
        "method": cfg.method, "network": evaluated_network(trainer.method), "dataset": cfg.dataset, "epochs": cfg.epochs,
        "step": trainer.step, "seed": cfg.seed,
        "knn_top1": evaluation.get("knn_top1"), "linear_top1": evaluation.get("linear_top1"),
        "trained_at": json.loads((run_dir / "provenance.json").read_text()) if (run_dir / "provenance.json").exists()
        else None,
        "exported_at": provenance("cpu"),
        "load": f"torch.hub.load('<repo dir>', '{cfg.arch}_osessl', source='local', weights='{out.name}')",
    }
    atomic_write_json(out.with_suffix(".json"), card)
    return card


def load_encoder(weights: str | Path, arch: str | None = None) -> nn.Module:
    """An exported encoder in its torchvision constructor (the card beside the weights gives arch and stem)."""
    weights = Path(weights)
    card_path = weights.with_suffix(".json")
    card = json.loads(card_path.read_text()) if card_path.exists() else {}
    arch = arch or card.get("torchvision_constructor")
    if arch is None:
        raise ValueError(f"no card {card_path}: pass arch='resnet18' or 'resnet50'")
    model = build_torchvision_resnet(arch, card.get("stem"))
    model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    return model.eval()
