"""A small ImageNet-shaped image folder for tests, benchmarks and CI: mixed-size JPEGs under WordNet-like ids.

Each class has its own look (hue of a background gradient, its direction, a shape and its colour), every image
its own placement, scale and noise, so a k-NN on the images beats chance while no two images are alike.
Everything comes from numpy generators seeded with (seed, split, class, image), so a seed gives the same bytes.
"""
from __future__ import annotations

import colorsys
import io
from pathlib import Path

import numpy as np
from PIL import Image

DEFAULT_SIZES = ((500, 375), (375, 500), (333, 500), (640, 480))  # (width, height), ImageNet's common shapes


def class_name(k: int) -> str:
    """WordNet-id-like folder name of class k: n00000000, n00000001, ..."""
    return f"n{k:08d}"


def make_image_folder(root, classes: int | list[str] = 4, per_class: int = 6, splits=("train", "val"), sizes=DEFAULT_SIZES,
                      quality: int = 90, seed: int = 0, odd: bool = False, source=None) -> Path:
    """Write root/<split>/<class>/<image>.JPEG and return root.

    classes: a count (folders n00000000, n00000001, ...) or the folder names themselves (e.g. the ImageNet-100
    WordNet ids, so that `--dataset imagenet100` finds its classes).
    sizes: (width, height) pairs, used in turn. odd=True adds, per split, one greyscale JPEG, one CMYK JPEG, one
    RGBA PNG and one 16-bit greyscale PNG (in classes 0, 1, 2, 3 modulo `classes`), the kinds that need the PIL
    fallback or careful conversion. source: an ImageDataset (uint8 N x 3 x h x w, labels, e.g. CIFAR-10) whose
    images, upscaled to `sizes`, replace the drawn content: real pictures at ImageNet shapes. Split s takes
    images [s * per_class, (s + 1) * per_class) of each of the source's first `classes` classes.
    """
    root = Path(root)
    names = [class_name(k) for k in range(classes)] if isinstance(classes, int) else list(classes)
    classes = len(names)
    if classes < 1 or per_class < 1 or not sizes:
        raise ValueError(f"need classes >= 1, per_class >= 1 and some sizes (got {classes}, {per_class}, {sizes})")
    if source is not None:
        if classes > source.num_classes:
            raise ValueError(f"source has {source.num_classes} classes, fewer than classes={classes}")
        by_class = [np.flatnonzero(source.labels.numpy() == k) for k in range(classes)]
        need = len(splits) * per_class
        short = [k for k, idx in enumerate(by_class) if len(idx) < need]
        if short:
            raise ValueError(f"source class {short[0]} has fewer than {need} images ({len(splits)} splits x "
                             f"{per_class})")
    serial = 0
    for s, split in enumerate(splits):
        for k in range(classes):
            folder = root / split / names[k]
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                width, height = sizes[serial % len(sizes)]
                serial += 1
                rng = np.random.default_rng([seed, s, k, i])
                if source is None:
                    pixels = _draw(rng, k, classes, width, height)
                else:
                    img = source.images[by_class[k][s * per_class + i]].permute(1, 2, 0).numpy()
                    pixels = np.asarray(Image.fromarray(img).resize((width, height), Image.BICUBIC))
                # ImageNet's own naming: train n..._<i>.JPEG, val ILSVRC2012_val_<serial>.JPEG (upper-case suffix).
                name = f"{names[k]}_{i}.JPEG" if split == "train" else f"ILSVRC2012_val_{serial:08d}.JPEG"
                Image.fromarray(pixels).save(folder / name, "JPEG", quality=quality)
        if odd:
            _write_odd(root / split, names, seed, s, quality)
    return root


def _draw(rng: np.random.Generator, k: int, classes: int, width: int, height: int) -> np.ndarray:
    """uint8 height x width x 3: class-coloured gradient + a class shape in the complementary colour + noise."""
    hue = (k / classes + rng.uniform(-0.03, 0.03)) % 1.0
    base = np.array(colorsys.hsv_to_rgb(hue, 0.75, 0.9), dtype=np.float32)
    accent = np.array(colorsys.hsv_to_rgb((hue + 0.5) % 1.0, 0.9, 0.8), dtype=np.float32)
    y = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None]
    x = np.linspace(0.0, 1.0, width, dtype=np.float32)[None, :]
    angle = np.pi * k / classes  # the gradient's direction is part of the class too
    ramp = np.float32(0.55) + np.float32(0.45 * np.cos(angle)) * x + np.float32(0.45 * np.sin(angle)) * y
    img = ramp[..., None] * base
    cy, cx = rng.uniform(0.3, 0.7, 2)
    r = rng.uniform(0.15, 0.3)
    aspect = width / height
    dy, dx = y - cy, (x - cx) * aspect
    shape = k % 3
    if shape == 0:
        mask = dy ** 2 + dx ** 2 < r ** 2
    elif shape == 1:
        mask = (np.abs(dy) < r) & (np.abs(dx) < r)
    else:
        mask = np.broadcast_to(np.sin((x * aspect + y) * (8 + 4 * (k % 5)) * np.pi) > 0.3, (height, width))
    img = np.where(mask[..., None], accent * 255, img * 255)
    img += 12.0 * rng.standard_normal((height, width, 1), dtype=np.float32)
    return np.clip(img, 0, 255, out=img).astype(np.uint8)


def _write_odd(split_dir: Path, names: list[str], seed: int, s: int, quality: int) -> None:
    classes = len(names)

    def pixels(k, w, h):
        return _draw(np.random.default_rng([seed, s, k, 10_000]), k, classes, w, h)

    def folder(k):
        return split_dir / names[k % classes]

    Image.fromarray(pixels(0, 400, 300)).convert("L").save(folder(0) / "odd_gray.JPEG", "JPEG", quality=quality)
    Image.fromarray(pixels(1 % classes, 300, 400)).convert("CMYK").save(folder(1) / "odd_cmyk.jpg", "JPEG",
                                                                          quality=quality)
    rgb = pixels(2 % classes, 320, 240)
    alpha = np.full(rgb.shape[:2] + (1,), 200, dtype=np.uint8)
    Image.fromarray(np.concatenate([rgb, alpha], 2), "RGBA").save(folder(2) / "odd_rgba.png", "PNG")
    grey = np.asarray(Image.fromarray(pixels(3 % classes, 240, 320)).convert("L")).astype(np.uint16)
    grey16 = grey * 257 + np.random.default_rng([seed, s, 3]).integers(0, 257, grey.shape, dtype=np.uint16)
    buf = io.BytesIO()
    Image.fromarray(grey16).save(buf, "PNG")  # uint16 array -> mode I;16 -> a 16-bit PNG
    (folder(3) / "odd_16bit.png").write_bytes(buf.getvalue())
