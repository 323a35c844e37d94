"""ResNets with the CIFAR stem (3x3 conv, stride 1, no max-pool), as used by ReSA's CIFAR code, and with the
ImageNet stem (7x7 stride-2 conv + 3x3 stride-2 max-pool) for 224 px training.

The CIFAR ResNet is written out here (rather than wrapping torchvision) because the tests and the CPU quickstart
need a narrow network (`width` < 64), which torchvision's BasicBlock ResNet cannot build. The ImageNet-stem ResNets
are torchvision's own constructors (fc = Identity), so their weights are the standard ones key for key; they are
64 channels wide only.
"""
from __future__ import annotations

import torch
import torchvision
from torch import nn
import torch.nn.functional as F

from .vit import VIT_ARCHITECTURES, build_vit, resolve_stem


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = _shortcut(cin, planes, stride)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int):
        super().__init__()
        cout = planes * self.expansion
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.shortcut = _shortcut(cin, cout, stride)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        return F.relu(self.bn3(self.conv3(out)) + self.shortcut(x))


def _shortcut(cin: int, cout: int, stride: int) -> nn.Module:
    if stride == 1 and cin == cout:
        return nn.Identity()
    return nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))


class CifarResNet(nn.Module):
    """Encoder e(.): image -> pooled feature h (no fc)."""

    def __init__(self, block, layers: list[int], width: int = 64, zero_pad: bool = True):
        super().__init__()
        # ReSA quirk: its CIFAR forward zero-pads 32x32 inputs to 34x34 before the stem (maps 34-34-17-9-5).
        self.pad = nn.ZeroPad2d(1) if zero_pad else nn.Identity()
        self.conv1 = nn.Conv2d(3, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        stages, cin = [], width
        for i, n in enumerate(layers):
            planes = width * 2**i
            blocks = []
            for j in range(n):
                blocks.append(block(cin, planes, 2 if (i > 0 and j == 0) else 1))
                cin = planes * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.out_dim = cin
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(self.pad(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)


ARCHITECTURES = {
    "resnet18": (BasicBlock, [2, 2, 2, 2]),
    "resnet50": (Bottleneck, [3, 4, 6, 3]),
}


def imagenet_resnet(arch: str, width: int = 64) -> nn.Module:
    """torchvision's resnet18/50 (random init, fc = Identity) with `out_dim`. torchvision's default init is kept
    (no zero-init of each block's last BN gamma): neither paper states one, and the CIFAR ResNet has none."""
    if width != 64:
        # torchvision's width_per_group only widens resnet50's 3x3 convs (out_dim stays 2048): not what `width`
        # means for the CIFAR ResNet (every stage's channels), so it is refused rather than reinterpreted.
        raise ValueError(f"the ImageNet-stem {arch} is torchvision's, 64 channels wide (width={width}); "
                         f"use width=64 or stem='cifar'")
    model = getattr(torchvision.models, arch)(weights=None)
    model.out_dim = model.fc.in_features  # 512 (resnet18) / 2048 (resnet50)
    model.fc = nn.Identity()
    return model


def build_encoder(arch: str = "resnet18", width: int = 64, zero_pad: bool = True, image_size: int = 32,
                  vit_depth: int | None = None, stem: str = "auto", vit_recipe: str = "torchvision") -> nn.Module:
    """A ResNet or a ViT (models/vit.py) built for `image_size`.

    stem: "cifar" (3x3 stride-1 conv, no max-pool; ReSA's zero pad if zero_pad), "imagenet" (torchvision's 7x7
    stride-2 conv + max-pool; zero_pad is ignored, width must be 64), or "auto" (CIFAR below 64 px, ImageNet from
    64 px up). For the ViTs vit_tiny/vit_small the stem is the patch size (4 px / 16 px); vit_s16 always has 16 px
    patches. ViTs ignore width and zero_pad; vit_recipe ("torchvision" | "mocov3") is for ViTs only."""
    if arch in VIT_ARCHITECTURES:
        return build_vit(arch, image_size, depth=vit_depth, stem=stem, recipe=vit_recipe)
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; choose one of {sorted([*ARCHITECTURES, *VIT_ARCHITECTURES])}")
    if resolve_stem(stem, image_size) == "imagenet":
        return imagenet_resnet(arch, width)
    block, layers = ARCHITECTURES[arch]
    return CifarResNet(block, layers, width=width, zero_pad=zero_pad)
