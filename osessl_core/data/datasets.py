"""Datasets as in-memory uint8 tensors: CIFAR-10/100 and generic image folders, decoded once and cached.

Decoding tens of thousands of small JPEGs is the slow part of start-up, so every source is decoded once into a
tensor file under the cache directory (keyed by dataset, split, source path, size and mtime); later loads only
read that file. Both splits are decoded in the same pass, so the train/test class folders are always compared.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import json
import os
import pickle
import tarfile
import warnings
import zlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from ..files import atomic_write_bytes


class DatasetError(ValueError):
    """A dataset could not be found or read; the message says what is wrong and how to fix it, on one line."""


class NormStats(NamedTuple):
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


# Per-channel statistics of pixel/255 on the train split; image folders compute theirs when decoded.
NORMALIZATION: dict[str, NormStats] = {
    "cifar10": NormStats((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": NormStats((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}

DATASETS = ("cifar10", "cifar100", "imagefolder")
SPLITS = ("train", "test")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
CACHE_VERSION = 1  # bump when the cached payload changes meaning

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]

# The fixed CIFAR-100 superclass of every fine class, needed when CIFAR-100 comes from an image folder (the
# pickles carry their own coarse labels). Coarse indices follow the sorted superclass names, as in the pickles.
CIFAR100_SUPERCLASSES = {
    "aquatic_mammals": ["beaver", "dolphin", "otter", "seal", "whale"],
    "fish": ["aquarium_fish", "flatfish", "ray", "shark", "trout"],
    "flowers": ["orchid", "poppy", "rose", "sunflower", "tulip"],
    "food_containers": ["bottle", "bowl", "can", "cup", "plate"],
    "fruit_and_vegetables": ["apple", "mushroom", "orange", "pear", "sweet_pepper"],
    "household_electrical_devices": ["clock", "keyboard", "lamp", "telephone", "television"],
    "household_furniture": ["bed", "chair", "couch", "table", "wardrobe"],
    "insects": ["bee", "beetle", "butterfly", "caterpillar", "cockroach"],
    "large_carnivores": ["bear", "leopard", "lion", "tiger", "wolf"],
    "large_man-made_outdoor_things": ["bridge", "castle", "house", "road", "skyscraper"],
    "large_natural_outdoor_scenes": ["cloud", "forest", "mountain", "plain", "sea"],
    "large_omnivores_and_herbivores": ["camel", "cattle", "chimpanzee", "elephant", "kangaroo"],
    "medium_mammals": ["fox", "porcupine", "possum", "raccoon", "skunk"],
    "non-insect_invertebrates": ["crab", "lobster", "snail", "spider", "worm"],
    "people": ["baby", "boy", "girl", "man", "woman"],
    "reptiles": ["crocodile", "dinosaur", "lizard", "snake", "turtle"],
    "small_mammals": ["hamster", "mouse", "rabbit", "shrew", "squirrel"],
    "trees": ["maple_tree", "oak_tree", "palm_tree", "pine_tree", "willow_tree"],
    "vehicles_1": ["bicycle", "bus", "motorcycle", "pickup_truck", "train"],
    "vehicles_2": ["lawn_mower", "rocket", "streetcar", "tank", "tractor"],
}
CIFAR100_COARSE_CLASSES = sorted(CIFAR100_SUPERCLASSES)
CIFAR100_FINE_TO_COARSE = {fine: coarse for coarse, fines in CIFAR100_SUPERCLASSES.items() for fine in fines}
CIFAR100_CLASSES = sorted(CIFAR100_FINE_TO_COARSE)

# torchvision's folder and file names for the python-pickle release of CIFAR.
_PICKLES = {
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], "batches.meta"),
    "cifar100": ("cifar-100-python", ["train"], ["test"], "meta"),
}


@dataclass
class ImageDataset:
    images: torch.Tensor  # uint8 N×3×H×W, contiguous, CPU
    labels: torch.Tensor  # int64 N
    classes: list[str]
    name: str
    split: str
    source: str  # where it was read from: a path, or "torchvision-download"
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    coarse_labels: torch.Tensor | None = None  # CIFAR-100: the 20 superclass labels
    coarse_classes: list[str] | None = None

    def __post_init__(self):
        if self.images.dtype != torch.uint8 or self.images.dim() != 4 or self.images.shape[1] != 3:
            raise DatasetError(f"images must be uint8 N×3×H×W, got {self.images.dtype} {tuple(self.images.shape)}")
        if self.labels.shape != (self.images.shape[0],):
            raise DatasetError(f"{self.images.shape[0]} images but labels of shape {tuple(self.labels.shape)}")
        if self.coarse_labels is not None and self.coarse_labels.shape != self.labels.shape:
            raise DatasetError("coarse_labels must have one entry per image")

    def __len__(self) -> int:
        return self.labels.shape[0]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def subset(self, indices) -> ImageDataset:
        """A copy holding only `indices` (ints, a LongTensor, a bool mask or a slice), in that order."""
        if isinstance(indices, slice):
            indices = torch.arange(len(self))[indices]
        idx = torch.as_tensor(indices)
        idx = idx.nonzero().flatten() if idx.dtype == torch.bool else idx.long().flatten()
        coarse = None if self.coarse_labels is None else self.coarse_labels[idx]
        return replace(self, images=self.images[idx].contiguous(), labels=self.labels[idx], coarse_labels=coarse)


def load_dataset(name: str, root: str | Path, split: str = "train", cache_dir: str | Path | None = None,
                 download: bool = True, image_size: int | None = None) -> ImageDataset:
    """Load one split of `name` from `root`, decoding (and caching) both splits on first use.

    cifar10/cifar100 look in `root` for, in order: torchvision's pickle folder (cifar-10-batches-py/,
    cifar-100-python/); an image-folder archive or folder (root itself a .tar.gz, or <name>-jpg.tar.gz,
    <name>*.tar.gz, <name>-jpg/ or train/ + test/ inside root); else a torchvision download into root.
    imagefolder: root is a folder or .tar.gz with [one level/]{train,test}/<class>/<images>.
    image_size: resize the shorter side and center-crop to a square of that size (needed when sizes differ).
    """
    name = str(name).lower()
    if name not in DATASETS:
        raise DatasetError(f"unknown dataset {name!r}; valid names: {', '.join(DATASETS)}")
    if split not in SPLITS:
        raise DatasetError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}")
    if image_size is not None and (not isinstance(image_size, int) or image_size < 1):
        raise DatasetError(f"image_size must be a positive int or None, got {image_size!r}")
    root = Path(root).expanduser().resolve()  # one cache entry however the path is spelled
    if not root.exists():
        how = ("a folder or .tar.gz with train/<class>/ and test/<class>/ images" if name == "imagefolder" else
               f"a folder holding torchvision's {_PICKLES[name][0]}/ or {name}-jpg.tar.gz, or an existing folder "
               "for torchvision to download into (needs a network)")
        raise DatasetError(f"dataset root {root} does not exist (looked there for {name} data); pass --data-root: "
                           + how)

    downloaded = False
    if name == "imagefolder":
        kind, source = ("tar" if root.is_file() else "folder"), root
    else:
        kind, source, searched = _find_cifar_source(name, root)
        if source is None:
            hint = (f"put torchvision's {_PICKLES[name][0]}/ or {name}-jpg.tar.gz (train/<class>/*.jpg, test/...) "
                    f"in {root}")
            if not download:
                raise DatasetError(f"no {name} data found (searched {', '.join(searched)}); {hint}, "
                                   "or pass download=True")
            _download_cifar(name, root, searched, hint)
            kind, source, downloaded = "pickle", root / _PICKLES[name][0], True

    cache_root = Path(cache_dir or os.environ.get("OSESSL_CACHE") or Path.home() / ".cache" / "osessl").expanduser()
    fingerprint = _fingerprint(kind, name, source)

    def cache_path(s: str) -> Path:
        key = json.dumps([CACHE_VERSION, name, s, str(source), fingerprint, image_size])
        return cache_root / f"{name}-{s}-{hashlib.sha256(key.encode()).hexdigest()[:16]}.pt"

    payload = _read_cache(cache_path(split))
    if payload is None:
        payloads = _decode_source(name, kind, source, image_size)
        for s, p in payloads.items():
            _write_cache(cache_path(s), p)
        if split not in payloads:
            raise DatasetError(f"{source} has no {split}/ split (found only {', '.join(payloads)})")
        payload = payloads[split]
    return ImageDataset(
        images=payload["images"], labels=payload["labels"], classes=list(payload["classes"]), name=name,
        split=split, source="torchvision-download" if downloaded else str(source),
        mean=tuple(payload["mean"]), std=tuple(payload["std"]),
        coarse_labels=payload.get("coarse_labels"),
        coarse_classes=list(payload["coarse_classes"]) if "coarse_classes" in payload else None)


# ---------------------------------------------------------------------------------------------- source discovery

def _find_cifar_source(name: str, root: Path) -> tuple[str, Path | None, list[str]]:
    """(kind, path, searched): the first source present, kind in {'pickle', 'tar', 'folder'}."""
    if root.is_file():
        return "tar", root, [str(root)]
    folder, train_files, test_files, meta = _PICKLES[name]
    pickles = root / folder
    searched = [f"{pickles}/"]
    if all((pickles / f).is_file() for f in [*train_files, *test_files, meta]):
        return "pickle", pickles, searched
    # Archives: the exact name first, then any <name>*.tar.gz; "cifar10" must not pick up "cifar100-jpg.tar.gz".
    archives = [root / f"{name}-jpg.tar.gz"] + sorted(
        p for ext in ("*.tar.gz", "*.tgz") for p in root.glob(f"{name}{ext}")
        if not p.name[len(name):len(name) + 1].isdigit())
    searched.append(f"{root}/{name}*.tar.gz")
    for archive in archives:
        if archive.is_file():
            return "tar", archive, searched
    extracted = root / f"{name}-jpg"  # may hold train/ directly or one folder down; _scan_folder checks
    searched += [f"{extracted}/", f"{root}/{{train,test}}/"]
    if extracted.is_dir():
        return "folder", extracted, searched
    if any((root / s).is_dir() for s in SPLITS):
        return "folder", root, searched
    return "pickle", None, searched


def _download_cifar(name: str, root: Path, searched: list[str], hint: str) -> None:
    import torchvision.datasets as tvd

    dataset_cls = tvd.CIFAR10 if name == "cifar10" else tvd.CIFAR100
    try:
        dataset_cls(str(root), train=True, download=True)  # downloads, extracts and md5-checks the pickles
    except Exception as e:  # no network, proxy, md5 mismatch: all mean "provide the files yourself"
        raise DatasetError(f"no {name} data found (searched {', '.join(searched)}) and the torchvision download "
                           f"into {root} failed ({type(e).__name__}: {_one_line(e)}); {hint}") from e


def _fingerprint(kind: str, name: str, source: Path) -> list:
    """Size and mtime of the source file(s): any change to the data invalidates the cache."""
    if source.is_file():
        st = source.stat()
        return [st.st_size, st.st_mtime_ns]
    if kind == "pickle":
        _, train_files, test_files, meta = _PICKLES[name]
        files = [source / f for f in [*train_files, *test_files, meta]]
    else:
        files = sorted(p for p in source.rglob("*") if p.is_file())
    digest = hashlib.sha256()
    for f in files:
        st = f.stat()
        digest.update(f"{f.relative_to(source)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return [len(files), digest.hexdigest()]


# ---------------------------------------------------------------------------------------------- cache

def _read_cache(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        return torch.load(path, weights_only=True)
    except Exception as e:  # truncated or from an incompatible version: decode again
        warnings.warn(f"ignoring unreadable dataset cache {path} ({_one_line(e)}); decoding again")
        return None


def _write_cache(path: Path, payload: dict) -> None:
    """Atomic (tmp file + rename), so a crash or a concurrent reader never sees half a file."""
    try:
        atomic_write_bytes(path, lambda f: torch.save(payload, f))
    except OSError as e:  # a read-only cache costs speed, not correctness
        warnings.warn(f"could not write dataset cache {path} ({_one_line(e)}); set OSESSL_CACHE or cache_dir")


# ---------------------------------------------------------------------------------------------- decoding

def _decode_source(name: str, kind: str, source: Path, image_size: int | None) -> dict[str, dict]:
    """Decode every split of `source` into {split: payload} with images, labels, classes, mean, std (+ coarse)."""
    if kind == "pickle":
        payloads = _read_pickles(name, source, image_size)
    else:
        found = _scan_tar(source, image_size) if kind == "tar" else _scan_folder(source, image_size)
        payloads = _assemble(name, found, str(source), image_size)
        if name == "cifar100":
            for p in payloads.values():
                lookup = torch.tensor([CIFAR100_COARSE_CLASSES.index(CIFAR100_FINE_TO_COARSE[c]) for c in p["classes"]])
                p["coarse_labels"] = lookup[p["labels"]]
                p["coarse_classes"] = list(CIFAR100_COARSE_CLASSES)
    if name == "imagefolder":  # normalise with the train statistics, also for the test split
        stats = _channel_stats(payloads["train" if "train" in payloads else next(iter(payloads))]["images"])
    else:
        stats = NORMALIZATION[name]
    for p in payloads.values():
        p["mean"], p["std"] = stats
    return payloads


def _read_pickles(name: str, folder: Path, image_size: int | None) -> dict[str, dict]:
    # torchvision.datasets.CIFAR10/100(download=False) insists on the md5 of the official files, which rules out
    # re-packed or test copies, and does not expose the CIFAR-100 coarse labels; the format is simple enough to
    # read here with the same keys torchvision uses.
    _, train_files, test_files, meta_file = _PICKLES[name]
    fine_key = "labels" if name == "cifar10" else "fine_labels"
    meta = _load_pickle(folder / meta_file)
    payloads = {}
    try:
        classes = [_text(c) for c in meta["label_names" if name == "cifar10" else "fine_label_names"]]
        for split, files in (("train", train_files), ("test", test_files)):
            entries = [_load_pickle(folder / f) for f in files]
            data = np.concatenate([np.asarray(e["data"], dtype=np.uint8) for e in entries]).reshape(-1, 3, 32, 32)
            images = torch.from_numpy(data).contiguous()
            payloads[split] = {"images": _resize(images, image_size) if image_size else images,
                               "labels": torch.tensor([y for e in entries for y in e[fine_key]], dtype=torch.int64),
                               "classes": classes}
            if name == "cifar100":
                payloads[split]["coarse_labels"] = torch.tensor([y for e in entries for y in e["coarse_labels"]],
                                                                dtype=torch.int64)
                payloads[split]["coarse_classes"] = [_text(c) for c in meta["coarse_label_names"]]
    except (KeyError, ValueError, TypeError) as e:
        raise DatasetError(f"malformed CIFAR pickles in {folder} ({type(e).__name__}: {_one_line(e)}); "
                           "delete the folder to download it again") from e
    return payloads


def _load_pickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            obj = pickle.load(f, encoding="latin1")  # the official files were pickled by Python 2
    except Exception as e:
        raise DatasetError(f"cannot read CIFAR pickle {path} ({_one_line(e)}); delete it to download again") from e
    return {_text(k): v for k, v in obj.items()}


def _text(x) -> str:
    return x.decode() if isinstance(x, bytes) else x


def _split_location(member: str) -> tuple[str, str, list[str]] | None:
    """'[prefix/]{train,test}/rest...' -> (prefix, split, rest); None for anything else or hidden entries."""
    parts = [p for p in member.split("/") if p not in ("", ".")]
    if any(p.startswith(".") or p == "__MACOSX" for p in parts):  # .DS_Store, ._x.jpg resource forks
        return None
    for depth in (0, 1):
        if len(parts) > depth and parts[depth] in SPLITS:
            return "/".join(parts[:depth]), parts[depth], parts[depth + 1:]
    return None


def _is_image(filename: str) -> bool:
    return filename.lower().endswith(IMAGE_EXTENSIONS)


# found: {split: {class: [(filename, where, image)]}}; a class folder without images maps to [].
Found = dict[str, dict[str, list]]


def _scan_tar(path: Path, image_size: int | None) -> Found:
    """One sequential pass over the archive (random access into a .tar.gz is slow), decoding as it streams."""
    by_prefix: dict[str, Found] = {}
    try:
        with tarfile.open(path, "r|*") as tf, _progress(f"decoding {path.name}") as bar, _quiet_decoding():
            for member in tf:
                loc = _split_location(member.name)
                if loc is None:
                    continue
                prefix, split, rest = loc
                classes = by_prefix.setdefault(prefix, {}).setdefault(split, {})
                if member.isdir() and len(rest) == 1:
                    classes.setdefault(rest[0], [])
                elif member.isfile() and len(rest) == 2 and _is_image(rest[1]):
                    where = f"{path}:{member.name}"
                    img = _decode_image(tf.extractfile(member).read(), where, image_size)
                    classes.setdefault(rest[0], []).append((rest[1], where, img))
                    bar.update()
    except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
        raise DatasetError(f"cannot read archive {path} ({type(e).__name__}: {_one_line(e)}); "
                           "is it a complete .tar.gz?") from e
    by_prefix = {p: f for p, f in by_prefix.items() if any(f.values())}  # ignore stray empty split folders
    if not by_prefix:
        raise DatasetError(f"archive {path} has no train/<class>/<image> or test/<class>/<image> layout "
                           "(at its top or one folder down)")
    if len(by_prefix) > 1:
        raise DatasetError(f"archive {path} holds several train/test trees ({', '.join(sorted(by_prefix))}); "
                           "keep one per archive")
    return next(iter(by_prefix.values()))


def _scan_folder(root: Path, image_size: int | None) -> Found:
    base = root
    if not any((root / s).is_dir() for s in SPLITS):  # allow one level of nesting, e.g. root/cifar10-jpg/train
        nested = [d for d in sorted(root.iterdir()) if d.is_dir() and any((d / s).is_dir() for s in SPLITS)]
        if not nested:
            raise DatasetError(f"{root} has no train/ or test/ folder (expected [one folder/]train/<class>/<image>)")
        if len(nested) > 1:
            raise DatasetError(f"{root} holds several datasets ({', '.join(d.name for d in nested)}); "
                               "point root at one of them")
        base = nested[0]
    files: list[tuple[str, str, Path]] = []
    found: Found = {}
    for split in SPLITS:
        if not (base / split).is_dir():
            continue
        found[split] = {}
        for class_dir in sorted(d for d in (base / split).iterdir() if d.is_dir() and not d.name.startswith(".")):
            found[split][class_dir.name] = []
            files += [(split, class_dir.name, f) for f in sorted(class_dir.iterdir())
                      if f.is_file() and _is_image(f.name) and not f.name.startswith(".")]
    with _progress(f"decoding {base.name}", total=len(files)) as bar, _quiet_decoding():
        for split, cls, f in files:
            found[split][cls].append((f.name, str(f), _decode_image(f.read_bytes(), str(f), image_size)))
            bar.update()
    return found


@functools.cache
def _fast_decoder():
    """torchvision.io's decoder: ~2x faster than PIL on small JPEGs (deprecated since torchvision 0.29 in favour
    of torchcodec, hence optional: without it PIL decodes everything)."""
    try:
        from torchvision.io import ImageReadMode, decode_image
    except ImportError:
        return None
    return lambda data: decode_image(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)


@contextlib.contextmanager
def _quiet_decoding():
    """Silence torchvision.io's per-call deprecation warning while we decode thousands of images."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning, module="torchvision")
        yield


def _decode_image(data: bytes, where: str, image_size: int | None) -> torch.Tensor:
    """Encoded bytes -> uint8 3×H×W RGB (resized + center-cropped when image_size is given)."""
    img, fast = None, _fast_decoder()
    if fast is not None:
        try:
            img = fast(data)
        except Exception:
            pass
    if img is not None and img.dtype == torch.uint16:  # 16-bit PNG: scale to 8 bits (a cast would clip to 255)
        img = _to_uint8(img.to(torch.int64), 65535)
    if img is None or img.dtype != torch.uint8:  # BMP, or corrupt: PIL decides
        try:
            with Image.open(io.BytesIO(data)) as im:
                if im.mode in ("I;16", "I;16B", "I;16L", "I"):  # PIL's convert("RGB") clips these to 255
                    grey = torch.from_numpy(np.array(im).astype(np.int64))
                    img = _to_uint8(grey, 65535 if im.mode.startswith("I;16") else max(int(grey.max()), 1))
                    img = img.unsqueeze(0).expand(3, -1, -1).contiguous()
                else:
                    img = torch.from_numpy(np.array(im.convert("RGB"))).permute(2, 0, 1).contiguous()
        except Exception as e:
            raise DatasetError(f"cannot decode image {where} ({type(e).__name__}: {_one_line(e)}); "
                               "replace or delete the file") from e
    return _resize(img, image_size) if image_size else img


def _to_uint8(values: torch.Tensor, peak: int) -> torch.Tensor:
    """Integers in [0, peak] -> uint8, rounded to the nearest of 256 levels."""
    return ((values.clamp(0, peak) * 255 + peak // 2) // peak).to(torch.uint8)


def _resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """Shorter side to `size`, then a center crop to size×size; works on one image or a batch."""
    from torchvision.transforms.v2 import functional as TF

    if images.shape[-2:] == (size, size):
        return images
    out = []
    for chunk in images.split(1024) if images.dim() == 4 else [images]:  # bounded float buffers for big batches
        out.append(TF.center_crop(TF.resize(chunk, size, antialias=True), [size, size]))
    return (torch.cat(out) if images.dim() == 4 else out[0]).contiguous()


def _assemble(name: str, found: Found, origin: str, image_size: int | None) -> dict[str, dict]:
    """Check the class folders of both splits, then stack each split into tensors (files sorted by name)."""
    splits = [s for s in SPLITS if s in found]
    if not splits:
        raise DatasetError(f"{origin} has no train/<class>/ or test/<class>/ folders")
    if len(splits) == 2 and set(found["train"]) != set(found["test"]):
        only_train = sorted(set(found["train"]) - set(found["test"]))
        only_test = sorted(set(found["test"]) - set(found["train"]))
        raise DatasetError(f"class folders differ between train and test in {origin}: only in train {only_train}, "
                           f"only in test {only_test}")
    classes = sorted(found[splits[0]])
    expected = {"cifar10": CIFAR10_CLASSES, "cifar100": CIFAR100_CLASSES}.get(name)
    if expected is not None and classes != expected:
        unexpected, missing = sorted(set(classes) - set(expected)), sorted(set(expected) - set(classes))
        raise DatasetError(f"{origin} does not hold the {name} classes: unexpected {unexpected}, missing {missing}; "
                           "use name='imagefolder' for other data")
    for split in splits:
        count = sum(len(v) for v in found[split].values())
        if count < len(classes):
            raise DatasetError(f"{origin}: {split} has {count} images for {len(classes)} classes; "
                               "every class folder needs at least one image")
        for cls in classes:
            if not found[split][cls]:
                raise DatasetError(f"empty class folder {split}/{cls} in {origin} "
                                   f"(no {'/'.join(IMAGE_EXTENSIONS)} files); add images or remove it")
    payloads, reference = {}, None
    for split in splits:
        images, labels = [], []
        for label, cls in enumerate(classes):
            for _, where, img in sorted(found[split][cls], key=lambda t: t[0]):
                if reference is None:
                    reference = (img.shape, where)
                elif img.shape != reference[0]:
                    raise DatasetError(f"{where} is {img.shape[2]}x{img.shape[1]} but {reference[1]} is "
                                       f"{reference[0][2]}x{reference[0][1]}; pass image_size=N to resize all images")
                images.append(img)
                labels.append(label)
        payloads[split] = {"images": torch.stack(images), "labels": torch.tensor(labels, dtype=torch.int64),
                           "classes": classes}
    return payloads


def _channel_stats(images: torch.Tensor) -> NormStats:
    """Per-channel mean/std of pixel/255, accumulated in float64 chunks (a float copy of all images is large)."""
    total, total_sq = torch.zeros(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64)
    for chunk in images.split(4096):
        x = chunk.to(torch.float64).div_(255)
        total += x.sum((0, 2, 3))
        total_sq += x.square().sum((0, 2, 3))
    n = images.numel() / 3
    mean = total / n
    std = (total_sq / n - mean.square()).clamp_min(0).sqrt()
    return NormStats(tuple(mean.tolist()), tuple(std.tolist()))


def _progress(desc: str, total: int | None = None):
    return tqdm(desc=desc, total=total, unit="img", disable=None, leave=False)  # disable=None: silent without a tty


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())[:300]
