"""ImageNet-style image folders streamed from disk: scanned once, decoded per batch, never all held in memory.

`open_image_folder(root, split)` lists `root/<split>/<class>/<image>` (sorted, so the index of a file is
deterministic) without decoding anything; `ImageFolderStream.read(i)` decodes one file. `train_views` cuts the
RandomResizedCrop + flip views of one decoded image from uniforms given by `view_uniforms(seed, epoch, index)`,
with the box function of the device path (`augment.crop_boxes`), so a view depends on (seed, epoch, index) only:
not on worker count, rank count or decoding backend. `eval_view` is the standard ImageNet test transform.
Batching, workers and devices are in `loader.py`.

Unreadable files fail by default, naming the file (a research dataset should not silently change). With
``bad_files="skip"`` a file that cannot be read is replaced by the next readable file of the dataset (index
i+1, i+2, ... wrapping), so batches keep their shape and the substitute is the same in every run and process.
"""
from __future__ import annotations

import functools
import hashlib
import io
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .augment import CROP_UNIFORMS, RATIO, crop_boxes
from .datasets import IMAGE_EXTENSIONS, DatasetError, NormStats, _decode_image, _one_line, _quiet_decoding

IMAGENET_STATS = NormStats((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
IMAGENET100_CLASS_LIST = Path(__file__).with_name("imagenet100.txt")  # classes= for ImageNet-100 (CMC)
BAD_FILE_POLICIES = ("fail", "skip")

_EVAL_SPLITS = ("val", "test")


class ImageFolderStream:
    """One split of an image folder: file names and labels in memory, pixels decoded on demand by `read`.

    The relative paths are kept in one numpy bytes array rather than a list of str: DataLoader workers forked
    from this process then share its pages (touching a Python object's refcount copies the page it lives on,
    which for 1.28 M strings costs each worker ~100 MB). `files` builds the list on first use.
    """

    def __init__(self, root: Path, split: str, names: np.ndarray, labels: torch.Tensor, classes: list[str],
                 image_size: int = 224, bad_files: str = "fail"):
        if bad_files not in BAD_FILE_POLICIES:
            raise DatasetError(f"unknown bad_files policy {bad_files!r}; expected 'fail' or 'skip'")
        if not isinstance(image_size, int) or image_size < 1:
            raise DatasetError(f"image_size must be a positive int, got {image_size!r}")
        self.root, self.split = Path(root), split
        self._names = names
        self.labels = labels
        self.classes = list(classes)
        self.mean, self.std = IMAGENET_STATS
        self.image_size = image_size
        self.bad_files = bad_files
        self.skipped: list[str] = []     # files skipped in this process, in the order met
        self._bad: dict[int, str] = {}   # index -> why it is unreadable (so a bad file is tried once)
        self._warn = True

    def __len__(self) -> int:
        return len(self._names)

    def __repr__(self) -> str:
        return (f"ImageFolderStream({str(self.root / self.split)!r}, {len(self)} images, {self.num_classes} classes, "
                f"image_size={self.image_size}, bad_files={self.bad_files!r})")

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @functools.cached_property
    def files(self) -> list[str]:
        """Paths relative to root/split, e.g. 'n01440764/n01440764_10026.JPEG'."""
        return [os.fsdecode(n) for n in self._names]

    def path(self, i: int) -> Path:
        return self.root / self.split / os.fsdecode(self._names[i])

    def subset(self, indices) -> ImageFolderStream:
        """The images at `indices` (ints, a LongTensor, a bool mask or a slice), in that order; same classes."""
        if isinstance(indices, slice):
            indices = torch.arange(len(self))[indices]
        idx = torch.as_tensor(indices)
        idx = idx.nonzero().flatten() if idx.dtype == torch.bool else idx.long().flatten()
        return ImageFolderStream(self.root, self.split, self._names[idx.numpy()], self.labels[idx].clone(),
                                 self.classes, self.image_size, self.bad_files)

    # ------------------------------------------------------------------------------------------ decoding

    def read(self, i: int) -> torch.Tensor:
        """Image i as uint8 3 x H x W RGB at the file's size (with bad_files='skip': its substitute's)."""
        return self.load(i)[1]

    def load(self, i: int) -> tuple[int, torch.Tensor]:
        """(index actually decoded, image): i itself, or with bad_files='skip' the next readable index."""
        return self._first_readable(i, self._decode)

    def load_bytes(self, i: int) -> tuple[int, bytes]:
        """(index, encoded bytes) of i or, with bad_files='skip', of the next file that can be read from disk."""
        return self._first_readable(i, self._read_bytes)

    def _first_readable(self, i: int, get):
        n = len(self)
        i = int(i)
        if not 0 <= i < n:
            raise IndexError(f"image index {i} out of range for {n} images in {self.root / self.split}")
        for k in range(n):
            j = (i + k) % n
            if j in self._bad:
                continue
            try:
                return j, get(j)
            except DatasetError as e:
                if self.bad_files == "fail":
                    raise
                self._record_bad(j, _one_line(e.__cause__ or e))
        raise DatasetError(f"no readable image left in {self.root / self.split} "
                           f"({len(self._bad)} unreadable files skipped)")

    def _read_bytes(self, i: int) -> bytes:
        path = self.path(i)
        try:
            return path.read_bytes()
        except OSError as e:
            raise DatasetError(f"cannot read image {path} ({type(e).__name__}: {_one_line(e)}); replace or delete "
                               "it, or pass --bad-files skip to skip unreadable files") from e

    def _decode(self, i: int) -> torch.Tensor:
        data = self._read_bytes(i)
        try:
            with _quiet_decoding():
                # torchvision.io first (libjpeg-turbo/libpng straight into a tensor: no PIL image, no copy),
                # PIL for the rest; 16-bit files are scaled, not clipped (datasets._decode_image).
                return _decode_image(data, str(self.path(i)), None)
        except DatasetError as e:
            cause = e.__cause__ or e
            raise DatasetError(f"cannot decode image {self.path(i)} ({type(cause).__name__}: {_one_line(cause)}); "
                               "replace or delete it, or pass --bad-files skip to skip unreadable files") from cause

    def _record_bad(self, i: int, reason: str) -> None:
        if i in self._bad:
            return
        self._bad[i] = reason
        self.skipped.append(str(self.path(i)))
        if self._warn:
            warnings.warn(f"skipping unreadable image {self.path(i)} ({reason}); its place in every batch goes to "
                          "the next readable image (bad_files='skip')", stacklevel=3)

    def _worker_copy(self) -> ImageFolderStream:
        """A copy for loader workers: it does not warn (the main process warns once, from what workers report)."""
        copy = ImageFolderStream(self.root, self.split, self._names, self.labels, self.classes, self.image_size,
                                 self.bad_files)
        copy._warn = False
        return copy


# ---------------------------------------------------------------------------------------------- scanning

def open_image_folder(root, split: str = "train", classes=None, image_size: int = 224,
                      bad_files: str = "fail") -> ImageFolderStream:
    """Scan root/<split>/<class>/<image> (no decoding) into an ImageFolderStream.

    classes: None (every class folder, sorted), a list of folder names, or a text file with one name per line
    (blank lines and '#' comments ignored; only a line's first word counts, so 'wnid description' files work).
    Labels index the sorted class names, as torchvision's ImageFolder does. split 'val' and 'test' stand in for
    each other when only one of the two folders exists.
    """
    root = Path(root).expanduser().absolute()
    if not root.is_dir():
        raise DatasetError(f"image folder root {root} does not exist or is not a folder "
                           "(expected root/<split>/<class>/<image>)")
    split_dir = root / split
    if not split_dir.is_dir() and split in _EVAL_SPLITS:
        other = _EVAL_SPLITS[1 - _EVAL_SPLITS.index(split)]
        if (root / other).is_dir():
            split, split_dir = other, root / other
    if not split_dir.is_dir():
        found = sorted(d.name for d in os.scandir(root) if d.is_dir() and not d.name.startswith("."))
        raise DatasetError(f"{root} has no {split}/ folder (found: {', '.join(found) or 'no folders'}); "
                           "expected root/<split>/<class>/<image>")

    class_dirs, flat = [], 0
    with os.scandir(split_dir) as it:
        for entry in it:
            if entry.name.startswith("."):
                continue
            if entry.is_dir():
                class_dirs.append(entry.name)
            elif _is_image(entry.name):
                flat += 1
    if flat:
        raise DatasetError(
            f"{split_dir} holds {flat} images directly instead of in <class>/ folders (ImageNet's raw, flat "
            f"validation set?); sort them into one folder per class first, e.g. with the widely used valprep.sh "
            f"script or from the ILSVRC2012 devkit's ground truth (ILSVRC2012_validation_ground_truth.txt)")

    if classes is None:
        wanted = sorted(class_dirs)
        if not wanted:
            raise DatasetError(f"no class folders in {split_dir} (expected {split_dir}/<class>/<image>)")
    else:
        wanted, source = _class_list(classes)
        on_disk = set(class_dirs)
        missing = [c for c in wanted if c not in on_disk]
        if missing:
            shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
            raise DatasetError(f"{len(missing)} class(es) from {source} have no folder in {split_dir}: {shown}")
        wanted = sorted(wanted)

    names, labels = [], []
    for label, cls in enumerate(wanted):
        with os.scandir(split_dir / cls) as it:
            files = sorted(e.name for e in it
                           if _is_image(e.name) and not e.name.startswith(".") and e.is_file())
        if not files:
            raise DatasetError(f"empty class folder {split_dir / cls} (no {'/'.join(IMAGE_EXTENSIONS)} files); "
                               "add images, remove the folder or leave the class out of the class list")
        prefix = os.fsencode(cls) + b"/"
        names += [prefix + os.fsencode(f) for f in files]
        labels.append(torch.full((len(files),), label, dtype=torch.int64))
    return ImageFolderStream(root, split, np.array(names, dtype=np.bytes_), torch.cat(labels), wanted,
                             image_size, bad_files)


def read_class_list(path) -> list[str]:
    """Class names from a text file: one per line, first word only, blank lines and '#' comments ignored."""
    path = Path(path).expanduser()
    try:
        text = path.read_text()
    except OSError as e:
        raise DatasetError(f"cannot read class list {path} ({type(e).__name__}: {_one_line(e)})") from e
    names = [line.split("#", 1)[0].split()[0] for line in text.splitlines() if line.split("#", 1)[0].strip()]
    if not names:
        raise DatasetError(f"class list {path} names no classes")
    return names


def _class_list(classes) -> tuple[list[str], str]:
    if isinstance(classes, (str, os.PathLike)):
        names, source = read_class_list(classes), f"class list {classes}"
    else:
        names, source = [str(c) for c in classes], "the class list"
        if not names:
            raise DatasetError("the class list is empty; pass None for every class folder")
    seen, dupes = set(), []
    for c in names:
        if c in seen:
            dupes.append(c)
        seen.add(c)
    if dupes:
        raise DatasetError(f"{source} names {', '.join(sorted(set(dupes)))} more than once")
    return names, source


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


# ---------------------------------------------------------------------------------------------- views

def view_seed(seed: int, epoch: int, index: int) -> int:
    """The generator seed of one image's views in one epoch: the first 8 bytes (little-endian) of
    blake2b(b"osessl-views:<seed>:<epoch>:<index>"). A hash rather than arithmetic, so nearby (seed, epoch, index)
    give unrelated streams and no two triples collide in practice."""
    digest = hashlib.blake2b(f"osessl-views:{int(seed)}:{int(epoch)}:{int(index)}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def view_uniforms(seed: int, epoch: int, index: int, num_views: int) -> torch.Tensor:
    """float64 (num_views, CROP_UNIFORMS + 1): crop uniforms then the flip uniform of each view of one image."""
    g = torch.Generator().manual_seed(view_seed(seed, epoch, index))
    return torch.rand(num_views, CROP_UNIFORMS + 1, generator=g, dtype=torch.float64)


def view_boxes(height: int, width: int, views, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Crop boxes int64 (V, 4) as (top, left, h, w) and flips bool (V,) of `views` on a height x width image.

    Needs only the image size, so the nvjpeg loader computes the boxes before the image is decoded."""
    u = torch.as_tensor(u, dtype=torch.float64)
    if u.shape != (len(views), CROP_UNIFORMS + 1):
        raise ValueError(f"expected uniforms of shape ({len(views)}, {CROP_UNIFORMS + 1}), got {tuple(u.shape)}")
    boxes = [torch.stack(crop_boxes(u[k:k + 1, :CROP_UNIFORMS], height, width, v.crop_scale, RATIO), 1)
             for k, v in enumerate(views)]
    return torch.cat(boxes), u[:, CROP_UNIFORMS] < 0.5


def cut_view(image_u8: torch.Tensor, box, size: int, kind: str, flip: bool) -> torch.Tensor:
    """Crop `box` (top, left, h, w), resize to size x size, flip: torchvision's RandomResizedCrop on tensors
    (crop, then resize with antialias) and RandomHorizontalFlip. Works on any device; uint8 in and out."""
    from torchvision.transforms.v2 import InterpolationMode
    from torchvision.transforms.v2 import functional as TF

    top, left, h, w = (int(b) for b in box)
    mode = InterpolationMode.BICUBIC if kind == "strong" else InterpolationMode.BILINEAR
    x = TF.resize(image_u8[:, top:top + h, left:left + w], [size, size], interpolation=mode, antialias=True)
    return TF.horizontal_flip(x) if flip else x


def train_views(image_u8: torch.Tensor, views, u: torch.Tensor) -> list[torch.Tensor]:
    """Every view of one decoded uint8 3 x H x W image: uint8 3 x S x S each, S = view.size.

    views: ViewAugment objects (their size, crop_scale and kind: weak -> bilinear, strong -> bicubic);
    u: float64 (len(views), CROP_UNIFORMS + 1) from `view_uniforms`."""
    _check_image(image_u8)
    boxes, flips = view_boxes(image_u8.shape[1], image_u8.shape[2], views, u)
    return [cut_view(image_u8, boxes[k], v.size, v.kind, bool(flips[k])) for k, v in enumerate(views)]


def eval_resize(size: int) -> int:
    """Shorter side before the centre crop: 256 for 224, scaled alike for other sizes."""
    return int(round(size * 256 / 224))


def eval_view(image_u8: torch.Tensor, size: int = 224) -> torch.Tensor:
    """The standard ImageNet test transform: shorter side to round(size * 256 / 224) (bilinear, antialias),
    then the central size x size crop."""
    from torchvision.transforms.v2 import InterpolationMode
    from torchvision.transforms.v2 import functional as TF

    _check_image(image_u8)
    x = TF.resize(image_u8, [eval_resize(size)], interpolation=InterpolationMode.BILINEAR, antialias=True)
    return TF.center_crop(x, [size, size])


def _check_image(image: torch.Tensor) -> None:
    if not isinstance(image, torch.Tensor) or image.dtype != torch.uint8 or image.dim() != 3 or image.shape[0] != 3:
        raise ValueError(f"expected a uint8 3 x H x W image, got {getattr(image, 'dtype', type(image))} "
                         f"{tuple(getattr(image, 'shape', ()))}")


def jpeg_header(data: bytes) -> tuple[int, int] | None:
    """(height, width) of a baseline/progressive RGB or greyscale JPEG from its header, else None (PNG, CMYK JPEG,
    unreadable header...): those go to the CPU decoder. Reads the header only, no pixels."""
    if data[:3] != b"\xff\xd8\xff":
        return None
    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.format != "JPEG" or im.mode not in ("RGB", "L"):
                return None
            return im.height, im.width
    except Exception:
        return None
