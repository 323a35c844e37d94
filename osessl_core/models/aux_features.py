"""Frozen auxiliary encoders f_aux for DSA's prior (docs/decisions.md#d-dsa-9): nothing is downloaded and
nothing is trained.

* "hog": dense HOG (Dalal & Triggs) + a joint RGB colour histogram, in torch on the views' device. The offline
  analogue of the paper's SIFT row (Table 10: SIFT 71.98 against CLIP 72.09 top-1), and the default.
* "random_resnet": a frozen random-init CIFAR ResNet of the run's architecture (an ablation; the DSA code's f_aux
  has a random stem). Its BN layers keep no running statistics and normalise with the batch's own.
* "checkpoint": the evaluation encoder of one of our own runs, frozen, BN in eval mode (a flagged variant: DSA then
  distils another SSL run).

All take normalised views (B x 3 x H x W, as the networks see them) and return L2-normalised features. Their mode
is fixed whatever `.train()` says, they have no trainable parameters, and whatever state they have is fixed at
construction (so a resumed run computes the same features).

HOG and scikit-image (tests/test_hog.py): `hog(x, interpolate=False)` is `skimage.feature.hog(image,
orientations=9, pixels_per_cell=(4, 4), cells_per_block=(2, 2), block_norm="L2-Hys", channel_axis=-1)` on the
H x W x 3 image, to float32 rounding (1e-6): skimage sums each cell's votes in a C float, this code in the
input's dtype; with skimage's float32 summation reproduced, the two agree to 1e-12. Everything else is the same:
gradients [-1, 0, 1] that are 0 on the border rows (columns) for the derivative along the rows (columns), the
channel of largest magnitude, orientation bins [i pi/9, (i + 1) pi/9), a cell's mean vote, L2-Hys with eps 1e-5
and clip 0.2, the output order. The default, interpolate=True, differs in one respect: a pixel's vote is split
linearly between the two nearest bin centres (Dalal & Triggs' orientation interpolation), where skimage gives it
whole to the bin that contains it. That moves votes between neighbouring bins only: each cell's total is the same,
and where every orientation lies on a bin centre (an image that varies along its rows only: every gradient at
pi/2, the centre of bin 4) the two are equal. Neither has D&T's spatial interpolation between cells or their
Gaussian block window. Before the comparison, the gradient here was a 3 x 3 Sobel with replicated borders; it is now
skimage's and D&T's [-1, 0, 1] (which they found best). Measured on CPU at step 0 (CIFAR-10, batch 256), that moved
L_con from 0.152 to 0.149 and L_AM^s from 10.38 to 10.36.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .resnet import build_encoder


def hog_cells(images: torch.Tensor, cell: int = 4, bins: int = 9, interpolate: bool = True) -> torch.Tensor:
    """HOG's cell histograms of float images (B x C x H x W): B x bins x H/cell x W/cell.

    Gradients are central differences [-1, 0, 1] along each axis, 0 on the first and last row (column) for the
    derivative along the rows (columns); each pixel keeps the channel of largest gradient magnitude. The unsigned
    orientation atan2(gy, gx) mod pi votes with its magnitude into `bins` bins of width pi/bins: split linearly
    between the two nearest bin centres (`interpolate`, Dalal & Triggs), or whole into the bin that contains it
    (scikit-image). A cell's histogram is its pixels' mean vote."""
    gx = F.pad(images[..., :, 2:] - images[..., :, :-2], (1, 1))          # d/d column; 0 on the first/last column
    gy = F.pad(images[..., 2:, :] - images[..., :-2, :], (0, 0, 1, 1))    # d/d row; 0 on the first/last row
    strongest = (gx ** 2 + gy ** 2).argmax(1, keepdim=True)
    gx, gy = gx.gather(1, strongest).squeeze(1), gy.gather(1, strongest).squeeze(1)
    magnitude = torch.sqrt(gx ** 2 + gy ** 2)
    pos = torch.remainder(torch.atan2(gy, gx), math.pi) / math.pi * bins  # in [0, bins): bin i is [i, i + 1)
    if interpolate:
        pos = pos - 0.5                                                  # bin centres at 0.5, 1.5, ...
        lower = torch.floor(pos)
        upper_w = pos - lower
        lower = lower.long() % bins
        votes = (F.one_hot(lower, bins) * (1 - upper_w)[..., None]
                 + F.one_hot((lower + 1) % bins, bins) * upper_w[..., None]) * magnitude[..., None]
    else:
        votes = F.one_hot(torch.floor(pos).long() % bins, bins) * magnitude[..., None]
    return F.avg_pool2d(votes.to(images.dtype).permute(0, 3, 1, 2), cell)


def hog_blocks(cells: torch.Tensor, block: int = 2, clip: float = 0.2, eps: float = 1e-5) -> torch.Tensor:
    """Overlapping block x block blocks of cell histograms (B x bins x ny x nx; stride one cell), each L2-Hys
    normalised (v / sqrt(|v|^2 + eps^2), clipped at `clip`, the same again), flattened in skimage's order: block
    row, block column, then the block's cells row-major, each cell's bins."""
    ny, nx = cells.shape[-2] - block + 1, cells.shape[-1] - block + 1
    blocks = torch.stack([cells[:, :, i:i + ny, j:j + nx] for i in range(block) for j in range(block)], 1)
    blocks = blocks.permute(0, 3, 4, 1, 2).flatten(3)                   # (b, ny, nx, block cells x bins)
    blocks = blocks / torch.sqrt((blocks ** 2).sum(-1, keepdim=True) + eps ** 2)
    blocks = blocks.clamp(max=clip)
    blocks = blocks / torch.sqrt((blocks ** 2).sum(-1, keepdim=True) + eps ** 2)
    return blocks.flatten(1)


def hog(images: torch.Tensor, cell: int = 4, bins: int = 9, block: int = 2, clip: float = 0.2,
        eps: float = 1e-5, interpolate: bool = True) -> torch.Tensor:
    """Dense HOG of float images in [0, 1] (B x 3 x H x W): hog_blocks(hog_cells(...)). 32 x 32 input: 7 x 7
    blocks x 36 = 1764 values. See the module docstring for how it relates to skimage.feature.hog."""
    return hog_blocks(hog_cells(images, cell, bins, interpolate), block, clip, eps)


def colour_histogram(images: torch.Tensor, bins: int = 4) -> torch.Tensor:
    """Joint RGB histogram of float images in [0, 1] with `bins` levels per channel (bins^3 values, summing to 1)."""
    level = (images * bins).long().clamp(0, bins - 1)
    index = (level[:, 0] * bins + level[:, 1]) * bins + level[:, 2]
    return F.one_hot(index.flatten(1), bins ** 3).to(images.dtype).mean(1)


class HOGFeatures(nn.Module):
    """normalize([normalize(HOG); normalize(4 x 4 x 4 colour histogram)]): each part weighs half in a cosine."""

    def __init__(self, mean, std):
        super().__init__()
        self.mean, self.std = tuple(float(m) for m in mean), tuple(float(s) for s in std)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        images = torch.stack([x[:, c] * s + m for c, (m, s) in enumerate(zip(self.mean, self.std))], 1).clamp(0, 1)
        return F.normalize(torch.cat([F.normalize(hog(images), dim=1),
                                      F.normalize(colour_histogram(images), dim=1)], 1), dim=1)


class FrozenEncoder(nn.Module):
    """normalize(encoder(x)) with the encoder frozen, its mode fixed: eval (BN running statistics), or train with
    `batch_stats` (BN without running statistics: then batch statistics, synchronised across ranks under DDP like
    every BN of the method, so features do not depend on the number of ranks)."""

    def __init__(self, encoder: nn.Module, batch_stats: bool = False):
        super().__init__()
        self.batch_stats = batch_stats
        self.encoder = encoder.requires_grad_(False)
        self.train()

    def train(self, mode: bool = True):
        return super().train(self.batch_stats)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.encoder(x), dim=1)


def random_encoder(arch: str, width: int, zero_pad: bool) -> FrozenEncoder:
    """A random-init CIFAR ResNet whose BN layers use batch statistics (like the DSA code's f_aux, which stays in
    train mode) and hold no buffers: nothing in it changes during training, only its initial weights are saved."""
    encoder = build_encoder(arch, width, zero_pad)
    for m in encoder.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.track_running_stats = False
            m.running_mean = m.running_var = m.num_batches_tracked = None
    return FrozenEncoder(encoder, batch_stats=True)


def checkpoint_encoder(path: str, data) -> FrozenEncoder:
    """The eval_encoder() of the run saved at `path` (a run directory or its checkpoint.pt), frozen.

    The run's method is rebuilt from the checkpoint's own config (with this run's DataContext) and its weights
    loaded, so any registered method works. Raises FileNotFoundError or IncompatibleCheckpointError."""
    from ..config import TrainConfig
    from ..engine.checkpoint import IncompatibleCheckpointError, load_checkpoint
    from ..methods import build_method
    file = Path(path) / "checkpoint.pt" if Path(path).is_dir() else Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"prior_checkpoint {str(path)!r}: no checkpoint there (give a run directory or "
                                "its checkpoint.pt)")
    state = load_checkpoint(file)
    try:
        method = build_method(TrainConfig.from_dict(state["config"]), data)
        method.load_state_dict(state["model"])
    except (RuntimeError, ValueError, KeyError) as e:
        raise IncompatibleCheckpointError(f"prior_checkpoint {file} cannot be rebuilt with this data: {e}") from e
    return FrozenEncoder(method.eval_encoder())


PRIORS = ("hog", "random_resnet", "checkpoint")


def build_aux_encoder(prior: str, cfg, data, checkpoint: str = "") -> nn.Module:
    """f_aux by name (see the module docstring); `checkpoint` is the run for prior="checkpoint"."""
    if prior == "hog":
        return HOGFeatures(data.mean, data.std)
    if prior == "random_resnet":
        return random_encoder(cfg.arch, cfg.width, cfg.zero_pad)
    if prior == "checkpoint":
        if not checkpoint:
            raise ValueError("prior='checkpoint' needs prior_checkpoint=<run directory or checkpoint.pt>")
        return checkpoint_encoder(checkpoint, data)
    raise ValueError(f"unknown prior {prior!r}; choose one of {PRIORS}")
