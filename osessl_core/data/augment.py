"""Batched SSL view augmentations with per-sample random parameters.

torchvision's transforms draw one set of random parameters per call, so applying
them to a batch tensor gives every sample the same crop/jitter -- useless for
SSL.  Here every sample gets its own parameters, all ops are vectorised tensor
ops on uint8 input already on the device, every random number comes from the
caller's ``generator`` and nothing syncs with the host (no ``.item()``, no
data-dependent Python branches), so it can run inside a CUDA training step or
under ``torch.compile``.

The two pipelines reproduce ReSA's CIFAR views (torchvision semantics):

* weak:   RandomResizedCrop(bilinear) -> HorizontalFlip -> Normalize
* strong: RandomResizedCrop(bicubic) -> RandomApply(ColorJitter(.4,.4,.2,.1), .8)
          -> RandomGrayscale(.2) -> GaussianBlur(p=blur_prob)
          -> RandomApply(Solarize(128), solarize_prob) -> HorizontalFlip -> Normalize

Known deviations from the PIL reference (all small, see tests):
* Resizing uses ``grid_sample``: torch's bicubic kernel (a=-0.75, PIL uses -0.5)
  and no antialiasing when downsizing (irrelevant for CIFAR, where the crop is
  never larger than the output).
* Everything is computed in float; PIL rounds to uint8 after every op.
* Grey is 0.299R + 0.587G + 0.114B (PIL's weights; torchvision's tensor ops use 0.2989R).
* Blur (not in the CIFAR recipe) uses an odd kernel of ~10% of the output side,
  sigma ~ U[0.1, 2.0], reflect padding, like torchvision's GaussianBlur on tensors.

Randomness is one ``torch.rand(B, D)`` draw per view from the caller's generator; every
parameter (crop box, flip, jitter factors and order, ...) is a pure function of those
uniforms, so ``ViewAugment.apply(images, uniforms)`` compiles into a few fused kernels
(dynamo cannot trace an explicit ``torch.Generator``, so the draw itself stays eager).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

RATIO = (3.0 / 4.0, 4.0 / 3.0)
# ColorJitter(brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1) factor ranges,
# in op order 0=brightness, 1=contrast, 2=saturation, 3=hue.
JITTER_LOW = (0.6, 0.6, 0.8, -0.1)
JITTER_HIGH = (1.4, 1.4, 1.2, 0.1)
BLUR_SIGMA = (0.1, 2.0)


def _check_images(images: torch.Tensor) -> None:
    if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8:
        raise ValueError(f"expected a uint8 tensor, got {getattr(images, 'dtype', type(images))}")
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"expected images of shape B x 3 x H x W, got {tuple(images.shape)}")


def _per_sample(t: torch.Tensor) -> torch.Tensor:
    """(B,) -> (B, 1, 1, 1) so per-sample values broadcast over images."""
    return t.view(-1, 1, 1, 1)


# ----------------------------------------------------------------------------- crops


CROP_UNIFORMS = 22  # 10 scale and 10 aspect attempts, then the top and left offsets


def crop_boxes(u: torch.Tensor, height: int, width: int, scale=(0.2, 1.0), ratio=RATIO):
    """Per-sample RandomResizedCrop.get_params from uniforms u (B, CROP_UNIFORMS): int64 (i, j, h, w), each (B,).

    All 10 attempts are evaluated for every sample at once and the first valid one
    is kept; samples with no valid attempt get torchvision's central fallback.
    """
    area = height * width
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    target_area = area * (scale[0] + (scale[1] - scale[0]) * u[:, :10])
    aspect = torch.exp(log_lo + (log_hi - log_lo) * u[:, 10:20])
    # torch.round rounds half to even, like Python's round() in torchvision.
    w = torch.round(torch.sqrt(target_area * aspect))
    h = torch.round(torch.sqrt(target_area / aspect))
    ok = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = ok.to(torch.uint8).argmax(dim=1, keepdim=True)  # index of first valid attempt
    found = ok.any(dim=1)
    w = w.gather(1, first).squeeze(1)
    h = h.gather(1, first).squeeze(1)

    # Fallback: central crop with the aspect ratio clamped into `ratio` (static ints).
    in_ratio = width / height
    if in_ratio < min(ratio):
        fw, fh = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        fw, fh = int(round(height * max(ratio))), height
    else:
        fw, fh = width, height
    w = torch.where(found, w, torch.full_like(w, fw))
    h = torch.where(found, h, torch.full_like(h, fh))

    # randint(0, n + 1) as floor(U * (n + 1)); the clamp guards against U rounding up to 1.
    i = torch.minimum(torch.floor(u[:, 20] * (height - h + 1)), height - h)
    j = torch.minimum(torch.floor(u[:, 21] * (width - w + 1)), width - w)
    i = torch.where(found, i, torch.full_like(i, (height - fh) // 2))
    j = torch.where(found, j, torch.full_like(j, (width - fw) // 2))
    return i.long(), j.long(), h.long(), w.long()


def crop_resize(x: torch.Tensor, boxes, size: int, flip: torch.Tensor | None = None,
                mode: str = "bilinear") -> torch.Tensor:
    """Crop each float image to its box (i, j, h, w) and resize to size x size.

    One affine grid per sample: with align_corners=False output pixel centres
    land where resizing the crop would put them.  The horizontal flip is free
    (negated x scale).  Sampling coordinates are clamped to the box's outer
    pixel centres so, as with crop-then-resize, no pixel outside the box leaks
    in at the borders.
    """
    b, c, height, width = x.shape
    i, j, h, w = (t.to(x.dtype) for t in boxes)
    sx, sy = w / width, h / height
    if flip is not None:
        sx = torch.where(flip, -sx, sx)
    tx, ty = (2 * j + w) / width - 1, (2 * i + h) / height - 1
    zero = torch.zeros_like(sx)
    theta = torch.stack([torch.stack([sx, zero, tx], 1), torch.stack([zero, sy, ty], 1)], 1)
    grid = F.affine_grid(theta, [b, c, size, size], align_corners=False)
    gx = torch.clamp(grid[..., 0], ((2 * j + 1) / width - 1).view(-1, 1, 1),
                     ((2 * (j + w) - 1) / width - 1).view(-1, 1, 1))
    gy = torch.clamp(grid[..., 1], ((2 * i + 1) / height - 1).view(-1, 1, 1),
                     ((2 * (i + h) - 1) / height - 1).view(-1, 1, 1))
    out = F.grid_sample(x, torch.stack([gx, gy], -1), mode=mode, padding_mode="border",
                        align_corners=False)
    return out.clamp(0, 1) if mode == "bicubic" else out  # bicubic overshoots


# ----------------------------------------------------------------------------- colour
# All take float images in [0, 1], B x 3 x H x W, and per-sample factors of shape (B,).


def rgb_to_gray(x: torch.Tensor) -> torch.Tensor:
    """ITU-R 601 luma (PIL's "L" weights), B x 1 x H x W."""
    r, g, b = x.unbind(1)
    return (0.299 * r + 0.587 * g + 0.114 * b).unsqueeze(1)


def _blend(x: torch.Tensor, factor: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    f = _per_sample(factor)
    return (f * x + (1 - f) * target).clamp(0, 1)


def adjust_brightness(x, factor):
    return _blend(x, factor, torch.zeros_like(x))


def adjust_contrast(x, factor):
    return _blend(x, factor, rgb_to_gray(x).mean(dim=(1, 2, 3), keepdim=True))


def adjust_saturation(x, factor):
    return _blend(x, factor, rgb_to_gray(x))


def adjust_hue(x, shift):
    """Rotate hue by `shift` (fraction of a turn) in HSV space; S and V are unchanged."""
    r, g, b = x.unbind(1)
    v = x.amax(1)
    chroma = v - x.amin(1)
    safe = torch.where(chroma > 0, chroma, torch.ones_like(chroma))  # grey pixels: hue is moot
    hue6 = torch.where(v == r, (g - b) / safe,
                       torch.where(v == g, (b - r) / safe + 2, (r - g) / safe + 4))
    hue6 = (hue6 + 6 * shift.view(-1, 1, 1)).unsqueeze(1)
    # Closed-form HSV -> RGB: channel n in (R, G, B) = (5, 3, 1).
    n = 5 - 2 * torch.arange(3, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    k = torch.remainder(n + hue6, 6)
    return v.unsqueeze(1) - chroma.unsqueeze(1) * torch.clamp(torch.minimum(k, 4 - k), 0, 1)


def color_jitter(x: torch.Tensor, factors: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """Apply brightness/contrast/saturation/hue in a per-sample order.

    factors: (B, 4) = (brightness, contrast, saturation, hue shift);
    order:   (B, 4) permutation of 0..3 per sample (torchvision's randperm(4)).
    Round r applies op order[:, r] to each sample.  The three linear ops are one
    blend f*x + (1-f)*target with a per-sample factor and target.
    """
    ones = torch.ones_like(factors[:, 0])
    for r in range(4):
        op = order[:, r]
        # hue rounds use factor 1 (identity blend) and get the hue op below
        f = torch.where(op == 3, ones, factors.gather(1, op.clamp(max=2).unsqueeze(1)).squeeze(1))
        gray = rgb_to_gray(x)
        target = torch.where(_per_sample(op == 1), gray.mean(dim=(1, 2, 3), keepdim=True), gray)
        target = torch.where(_per_sample(op == 0), torch.zeros_like(target), target)
        x = torch.where(_per_sample(op == 3), adjust_hue(x, factors[:, 3]), _blend(x, f, target))
    return x


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """Separable Gaussian blur with a per-sample sigma (B,), reflect padding like torchvision."""
    b, c, height, width = x.shape
    half = kernel_size // 2
    t = torch.arange(-half, half + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-0.5 * (t / sigma.view(-1, 1)) ** 2)
    k = (k / k.sum(1, keepdim=True)).repeat_interleave(c, 0)  # one kernel per (sample, channel)
    # Grouped conv over B*C "channels" gives every image its own kernel in one call.
    y = F.pad(x.reshape(1, b * c, height, width), (half, half, half, half), mode="reflect")
    y = F.conv2d(y, k.view(b * c, 1, 1, kernel_size), groups=b * c)
    y = F.conv2d(y, k.view(b * c, 1, kernel_size, 1), groups=b * c)
    return y.view(b, c, height, width)


def blur_kernel_size(size: int) -> int:
    """Odd kernel ~10% of the image side (23 for 224, as in BYOL/SimCLR); at least 3."""
    return max(3, 2 * int(0.05 * size) + 1)


def solarize(x: torch.Tensor, threshold: float = 128 / 255) -> torch.Tensor:
    """PIL ImageOps.solarize(128) in [0, 1]: values >= threshold are inverted."""
    return torch.where(x >= threshold, 1 - x, x)


# ----------------------------------------------------------------------------- pipelines


def _check_stats(mean, std) -> None:
    if len(mean) != 3 or len(std) != 3:
        raise ValueError(f"mean and std need 3 values (RGB), got {len(mean)} and {len(std)}")


def _normalize_float(x: torch.Tensor, mean, std) -> torch.Tensor:
    # Python-scalar maths per channel: no host->device copy of mean/std (CUDA-graph safe).
    return torch.stack([(x[:, c] - float(m)) / float(s) for c, (m, s) in enumerate(zip(mean, std))], 1)


def normalize(images: torch.Tensor, mean, std) -> torch.Tensor:
    """No augmentation (evaluation): uint8 B x 3 x H x W -> normalised float32."""
    _check_images(images)
    _check_stats(mean, std)
    return _normalize_float(images.to(torch.get_default_dtype()) / 255, mean, std)


class ViewAugment:
    """One view pipeline ("weak" or "strong"), batched with per-sample random parameters.

    blur_prob and solarize_prob only affect the strong pipeline.
    """

    def __init__(self, kind: str, size: int, mean, std, crop_scale=(0.2, 1.0),
                 blur_prob: float = 0.0, solarize_prob: float = 0.2):
        if kind not in ("weak", "strong"):
            raise ValueError(f"unknown view kind {kind!r}; expected 'weak' or 'strong'")
        _check_stats(mean, std)
        self.kind, self.size = kind, int(size)
        self.mean, self.std = tuple(mean), tuple(std)
        self.crop_scale = tuple(crop_scale)
        self.blur_prob, self.solarize_prob = float(blur_prob), float(solarize_prob)

    def __repr__(self):
        return (f"ViewAugment(kind={self.kind!r}, size={self.size}, crop_scale={self.crop_scale}, "
                f"blur_prob={self.blur_prob}, solarize_prob={self.solarize_prob})")

    @property
    def num_uniforms(self) -> int:
        """Uniforms per sample: crop, flip, then (strong) jitter gate, 4 factors, 4 order keys, grey, [blur gate,
        sigma], solarize gate."""
        strong = 11 + (2 if self.blur_prob > 0 else 0) if self.kind == "strong" else 0
        return CROP_UNIFORMS + 1 + strong

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None,
                 total: int | None = None, offset: int = 0, cropped: bool = False) -> torch.Tensor:
        """Augment `images`. With `total`, the random parameters are drawn for a batch of `total` samples and
        rows [offset, offset + B) of them are used: every rank of a distributed run draws the global batch's
        parameters from a shared generator and augments only its shard, so views do not depend on world size.

        cropped=True: `images` are this view's crops already cut (and flipped) by a streaming loader at the
        output size; the same uniforms are drawn and the crop ones left unused, so the generator advances alike."""
        _check_images(images)
        b = images.shape[0]
        n = b if total is None else total
        if not 0 <= offset <= n - b:
            raise ValueError(f"rows [{offset}, {offset + b}) do not fit in a batch of {n}")
        if cropped and images.shape[-2:] != (self.size, self.size):
            raise ValueError(f"crops of {tuple(images.shape[-2:])} px for a {self.size}px view")
        u = torch.rand(n, self.num_uniforms, generator=generator, device=images.device)[offset:offset + b]
        if cropped:
            return getattr(self, "_apply_cropped", self.apply_cropped)(images, u)
        return getattr(self, "_apply", self.apply)(images, u)

    def compile(self, **kwargs) -> "ViewAugment":
        """Compile `apply` and `apply_cropped` (a handful of fused kernels instead of ~100 launches per view)."""
        self._apply = torch.compile(self.apply, dynamic=False, **kwargs)
        self._apply_cropped = torch.compile(self.apply_cropped, dynamic=False, **kwargs)
        return self

    def apply(self, images: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """The view of uint8 `images` for per-sample uniforms u (B, num_uniforms): deterministic, no host sync."""
        _, _, height, width = images.shape
        u = u.to(torch.get_default_dtype())
        boxes = crop_boxes(u[:, :CROP_UNIFORMS], height, width, self.crop_scale, RATIO)
        # The flip is the pipeline's last op but commutes with every pixel op, so fold it into the crop.
        flip = u[:, CROP_UNIFORMS] < 0.5
        mode = "bicubic" if self.kind == "strong" else "bilinear"
        x = crop_resize(images.to(u.dtype) / 255, boxes, self.size, flip, mode=mode)
        return self.finish(x, u)

    def apply_cropped(self, crops: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """The view of uint8 crops already cut and flipped at the output size (streamed data)."""
        u = u.to(torch.get_default_dtype())
        return self.finish(crops.to(u.dtype) / 255, u)

    def finish(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """Everything after crop and flip, on float images in [0, 1]: colour (strong) and normalisation."""
        u = u[:, CROP_UNIFORMS:]
        if self.kind == "strong":
            apply = u[:, 1] < 0.8
            factors = torch.stack([lo + (hi - lo) * u[:, 2 + k]
                                   for k, (lo, hi) in enumerate(zip(JITTER_LOW, JITTER_HIGH))], 1)
            order = u[:, 6:10].argsort(dim=1)  # uniform random permutation per sample
            x = torch.where(_per_sample(apply), color_jitter(x, factors, order), x)

            gray = u[:, 10] < 0.2
            x = torch.where(_per_sample(gray), rgb_to_gray(x).expand_as(x), x)

            if self.blur_prob > 0:  # static config, not data-dependent
                blur = u[:, 11] < self.blur_prob
                sigma = BLUR_SIGMA[0] + (BLUR_SIGMA[1] - BLUR_SIGMA[0]) * u[:, 12]
                x = torch.where(_per_sample(blur), gaussian_blur(x, sigma, blur_kernel_size(self.size)), x)

            sol = u[:, -1] < self.solarize_prob
            x = torch.where(_per_sample(sol), solarize(x), x)
        return _normalize_float(x, self.mean, self.std)


def weak_view(size, mean, std) -> ViewAugment:
    return ViewAugment("weak", size, mean, std)


def strong_view(size, mean, std, blur_prob=0.0) -> ViewAugment:
    return ViewAugment("strong", size, mean, std, blur_prob=blur_prob)
