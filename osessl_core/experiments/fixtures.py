"""Small image folders cut from the CIFAR-10 archive, standing in for the data that is not here (ImageNet, the
fine-grained sets) so that the image-folder notebooks and their tests run."""
from __future__ import annotations

import json
import tarfile
from pathlib import Path
from typing import Iterable

from ..paths import default_data_root
from .paths import CIFAR_ARCHIVE_NAME, resolve_path


def make_image_folder_from_cifar(dest: str | Path, archive: str | Path | None = None, per_class_train: int = 20,
                                 per_class_test: int = 20, classes: Iterable[str] | None = None) -> Path:
    """Copy the first `per_class_*` JPEGs of each class (archive order) of the CIFAR-10 archive into
    dest/{train,test}/<class>/, for testing the image-folder notebooks. Reuses dest if already complete."""
    from ..data.datasets import CIFAR10_CLASSES
    archive = Path(archive) if archive else default_data_root() / CIFAR_ARCHIVE_NAME
    dest = resolve_path(dest)
    wanted = list(classes) if classes is not None else list(CIFAR10_CLASSES)
    unknown = sorted(set(wanted) - set(CIFAR10_CLASSES))
    if unknown:
        raise ValueError(f"unknown CIFAR-10 classes {unknown}; valid: {CIFAR10_CLASSES}")
    quota = {"train": per_class_train, "test": per_class_test}
    marker = dest / ".complete.json"
    spec = {"archive": str(archive), "quota": quota, "classes": wanted}
    if marker.exists() and json.loads(marker.read_text()) == spec:
        return dest
    if not archive.is_file():
        raise FileNotFoundError(f"CIFAR-10 archive not found at {archive}")
    counts = {(s, c): 0 for s in quota for c in wanted}
    remaining = sum(quota[s] for s, _ in counts)
    with tarfile.open(archive, "r|*") as tf:
        for member in tf:
            if remaining == 0:
                break
            parts = [p for p in member.name.split("/") if p not in ("", ".")]
            if not member.isfile() or len(parts) < 3 or parts[-3] not in quota or parts[-1].startswith("."):
                continue
            split, cls, fname = parts[-3:]
            if (split, cls) not in counts or counts[split, cls] >= quota[split]:
                continue
            target = dest / split / cls / fname
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(tf.extractfile(member).read())
            counts[split, cls] += 1
            remaining -= 1
    short = {f"{s}/{c}": n for (s, c), n in counts.items() if n < quota[s]}
    if short:
        raise ValueError(f"{archive} has too few images for {short}")
    marker.write_text(json.dumps(spec))
    return dest


def imagenet_stand_in(dest: str | Path, classes: int = 4, per_class: int = 6) -> Path:
    """A generated ImageNet-like folder (train/ and val/, JPEGs of mixed ImageNet-like shapes, kept small) that
    stands in for ImageNet in the ImageNet notebooks' smoke runs. Reuses dest if already written."""
    from ..data.synthetic import make_image_folder
    dest = resolve_path(dest)
    marker = dest / ".complete.json"
    spec = {"classes": classes, "per_class": per_class}
    if marker.exists() and json.loads(marker.read_text()) == spec:
        return dest
    make_image_folder(dest, classes=classes, per_class=per_class, sizes=((160, 120), (120, 160), (150, 100)))
    marker.write_text(json.dumps(spec))
    return dest
