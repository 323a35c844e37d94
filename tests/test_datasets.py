"""load_dataset: the real CIFAR-10 archive, torchvision pickles, image folders/archives, the cache and every error."""
import os
import pickle
import tarfile
import time
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from osessl_core.data import NORMALIZATION, DatasetError, ImageDataset, load_dataset
from osessl_core.data import datasets as datasets_module
from osessl_core.data.datasets import CIFAR10_CLASSES, CIFAR100_CLASSES, CIFAR100_COARSE_CLASSES

SHARED = Path(os.environ.get("OSESSL_SHARED") or Path(__file__).resolve().parents[1].parent / "shared")
ARCHIVE = SHARED / "data" / "cifar10-jpg.tar.gz"


@pytest.fixture(autouse=True)
def _private_default_cache(tmp_path, monkeypatch):
    # A test that forgets cache_dir must not write into the user's ~/.cache.
    monkeypatch.setenv("OSESSL_CACHE", str(tmp_path / "default-cache"))


@pytest.fixture
def cache(tmp_path):
    return tmp_path / "cache"


@pytest.fixture(scope="session")
def real_cache(tmp_path_factory):
    if not ARCHIVE.is_file():
        pytest.skip(f"real CIFAR-10 archive not found at {ARCHIVE} (set OSESSL_SHARED)")
    return tmp_path_factory.mktemp("cifar10-cache")


@pytest.fixture(scope="session")
def cifar10_train(real_cache):
    start = time.perf_counter()
    ds = load_dataset("cifar10", ARCHIVE.parent, "train", cache_dir=real_cache)
    print(f"first decode of {ARCHIVE.name}: {time.perf_counter() - start:.1f}s")
    return ds


# ---------------------------------------------------------------------------------------------- helpers

def pixel(split: str, label: int, i: int) -> tuple[int, int, int]:
    """A colour that identifies an image, so order and labels can be checked after decoding."""
    return (SPLIT_CODE[split], 10 * label % 256, 10 * i % 256)


SPLIT_CODE = {"train": 50, "test": 150}


def write_image(path: Path, color=(0, 0, 0), size=(8, 8)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size[1], size[0], 3), color, dtype=np.uint8)).save(path)


def make_folder(base: Path, layout: dict, ext: str = ".png", size=(8, 8)) -> Path:
    """layout: {split: {class: n_images}}; class labels follow the sorted class names."""
    for split, classes in layout.items():
        for label, cls in enumerate(sorted(classes)):
            (base / split / cls).mkdir(parents=True, exist_ok=True)
            for i in range(classes[cls]):
                write_image(base / split / cls / f"{i:04d}{ext}", pixel(split, label, i), size)
    return base


def make_tar(folder: Path, archive: Path, top_level: bool = False) -> Path:
    """folder/... stored as <folder name>/..., or with top_level its contents at the archive's top."""
    with tarfile.open(archive, "w:gz") as tf:
        for child in sorted(folder.iterdir()) if top_level else [folder]:
            tf.add(child, arcname=child.name)
    return archive


def dump(path: Path, obj) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def write_cifar10_pickles(root: Path) -> tuple[np.ndarray, list, np.ndarray, list]:
    """torchvision's cifar-10-batches-py layout, with the bytes keys of the official Python-2 pickles."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    train_data, train_labels = rng.integers(0, 256, (15, 3072), dtype=np.uint8), [i % 10 for i in range(15)]
    for b in range(5):
        dump(folder / f"data_batch_{b + 1}", {b"batch_label": b"training batch", b"data": train_data[3 * b:3 * b + 3],
                                              b"labels": train_labels[3 * b:3 * b + 3], b"filenames": [b"x.png"] * 3})
    test_data, test_labels = rng.integers(0, 256, (4, 3072), dtype=np.uint8), [9, 0, 1, 2]
    dump(folder / "test_batch", {b"batch_label": b"testing batch", b"data": test_data, b"labels": test_labels})
    dump(folder / "batches.meta", {b"label_names": [c.encode() for c in CIFAR10_CLASSES], b"num_vis": 3072})
    return train_data, train_labels, test_data, test_labels


def write_cifar100_pickles(root: Path) -> dict:
    """cifar-100-python layout, with str keys this time (both spellings occur in the wild)."""
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    out = {}
    for split, n in (("train", 6), ("test", 3)):
        fine = rng.integers(0, 100, n).tolist()
        coarse = rng.integers(0, 20, n).tolist()
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        dump(folder / split, {"data": data, "fine_labels": fine, "coarse_labels": coarse, "filenames": ["x"] * n})
        out[split] = (data, fine, coarse)
    dump(folder / "meta", {"fine_label_names": CIFAR100_CLASSES, "coarse_label_names": CIFAR100_COARSE_CLASSES})
    return out


def tiny_cifar10_folder(base: Path) -> Path:
    return make_folder(base, {"train": dict.fromkeys(CIFAR10_CLASSES, 2), "test": dict.fromkeys(CIFAR10_CLASSES, 1)})


def error_of(excinfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message, "DatasetError messages must be one line"
    return message


# ---------------------------------------------------------------------------------------------- real archive

def test_real_archive_train(cifar10_train):
    ds = cifar10_train
    assert isinstance(ds, ImageDataset)
    assert ds.images.shape == (50000, 3, 32, 32) and ds.images.dtype == torch.uint8 and ds.images.is_contiguous()
    assert ds.labels.dtype == torch.int64 and len(ds) == 50000
    assert ds.classes == ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    assert ds.num_classes == 10 and ds.name == "cifar10" and ds.split == "train"
    assert torch.bincount(ds.labels).tolist() == [5000] * 10
    assert Path(ds.source).samefile(ARCHIVE)
    assert (ds.mean, ds.std) == NORMALIZATION["cifar10"] and ds.coarse_labels is None
    assert 0.3 < ds.images.float().mean().item() / 255 < 0.6  # real pixels, not zeros


def test_real_archive_test_split_and_cached_reload(cifar10_train, real_cache):
    start = time.perf_counter()
    again = load_dataset("cifar10", ARCHIVE.parent, "train", cache_dir=real_cache)
    elapsed = time.perf_counter() - start
    print(f"cached load: {elapsed:.2f}s")
    assert elapsed < 2.0
    assert torch.equal(again.images, cifar10_train.images) and torch.equal(again.labels, cifar10_train.labels)
    test = load_dataset("cifar10", ARCHIVE.parent, "test", cache_dir=real_cache)  # cached by the same pass
    assert test.images.shape == (10000, 3, 32, 32) and torch.bincount(test.labels).tolist() == [1000] * 10
    assert test.classes == cifar10_train.classes and (test.mean, test.std) == NORMALIZATION["cifar10"]


def test_subset(cifar10_train):
    sub = cifar10_train.subset([0, 5000, 49999])
    assert sub.labels.tolist() == [0, 1, 9] and len(sub) == 3 and sub.images.is_contiguous()
    assert torch.equal(sub.images[1], cifar10_train.images[5000])
    assert sub.classes == cifar10_train.classes and sub.split == "train"
    assert len(cifar10_train.subset(cifar10_train.labels == 3)) == 5000
    assert len(cifar10_train.subset(slice(0, 10))) == 10
    assert len(cifar10_train) == 50000  # the original is untouched


# ---------------------------------------------------------------------------------------------- torchvision pickles

def test_cifar10_pickles(tmp_path, cache):
    train_data, train_labels, test_data, test_labels = write_cifar10_pickles(tmp_path)
    train = load_dataset("CIFAR10", tmp_path, "train", cache_dir=cache, download=False)
    assert train.images.shape == (15, 3, 32, 32) and train.images.dtype == torch.uint8
    assert torch.equal(train.images, torch.from_numpy(train_data).view(15, 3, 32, 32))
    assert train.labels.tolist() == train_labels and train.classes == CIFAR10_CLASSES
    assert train.source == str(tmp_path / "cifar-10-batches-py")
    test = load_dataset("cifar10", tmp_path, "test", cache_dir=cache, download=False)
    assert torch.equal(test.images, torch.from_numpy(test_data).view(4, 3, 32, 32))
    assert test.labels.tolist() == test_labels and (test.mean, test.std) == NORMALIZATION["cifar10"]


def test_cifar100_pickles_with_coarse_labels(tmp_path, cache):
    expected = write_cifar100_pickles(tmp_path)
    for split in ("train", "test"):
        ds = load_dataset("cifar100", tmp_path, split, cache_dir=cache, download=False)
        data, fine, coarse = expected[split]
        assert torch.equal(ds.images, torch.from_numpy(data).view(-1, 3, 32, 32))
        assert ds.labels.tolist() == fine and ds.coarse_labels.tolist() == coarse
        assert ds.classes == CIFAR100_CLASSES and ds.coarse_classes == CIFAR100_COARSE_CLASSES
        assert (ds.mean, ds.std) == NORMALIZATION["cifar100"]
    assert ds.subset([2, 0]).coarse_labels.tolist() == [coarse[2], coarse[0]]


def test_pickles_win_over_archive(tmp_path, cache):
    write_cifar10_pickles(tmp_path)
    (tmp_path / "cifar10-jpg.tar.gz").write_bytes(b"not read: the pickles come first")
    ds = load_dataset("cifar10", tmp_path, "train", cache_dir=cache, download=False)
    assert ds.source.endswith("cifar-10-batches-py") and len(ds) == 15


def test_image_size_resizes_pickles(tmp_path, cache):
    write_cifar10_pickles(tmp_path)
    ds = load_dataset("cifar10", tmp_path, "train", cache_dir=cache, download=False, image_size=16)
    assert ds.images.shape == (15, 3, 16, 16) and ds.images.dtype == torch.uint8


# ---------------------------------------------------------------------------------------------- CIFAR as image folders

def test_cifar10_archive_folder_and_file_roots(tmp_path, cache):
    folder = tiny_cifar10_folder(tmp_path / "src" / "cifar10-jpg")
    data = tmp_path / "data"
    data.mkdir()
    archive = make_tar(folder, data / "cifar10-jpg.tar.gz")
    (data / "cifar100-jpg.tar.gz").write_bytes(b"garbage that cifar10 must not pick")
    from_dir = load_dataset("cifar10", data, "train", cache_dir=cache, download=False)
    from_file = load_dataset("cifar10", archive, "test", cache_dir=cache, download=False)
    from_extracted = load_dataset("cifar10", tmp_path / "src", "train", cache_dir=cache, download=False)
    assert from_dir.source == str(archive) and from_file.source == str(archive)
    assert from_extracted.source == str(folder)
    assert from_dir.labels.tolist() == [c for c in range(10) for _ in range(2)] and len(from_file) == 10
    assert torch.equal(from_dir.images, from_extracted.images)
    assert from_dir.images[3, :, 0, 0].tolist() == list(pixel("train", 1, 1))


def test_cifar10_other_archive_name(tmp_path, cache):
    folder = tiny_cifar10_folder(tmp_path / "src" / "whatever")
    make_tar(folder, tmp_path / "cifar10_images_v2.tar.gz")
    ds = load_dataset("cifar10", tmp_path, "train", cache_dir=cache, download=False)
    assert ds.source.endswith("cifar10_images_v2.tar.gz") and len(ds) == 20


def test_cifar100_folder_uses_fixed_coarse_mapping(tmp_path, cache):
    folder = make_folder(tmp_path / "cifar100-jpg", {s: dict.fromkeys(CIFAR100_CLASSES, 1) for s in ("train", "test")},
                         size=(2, 2))
    ds = load_dataset("cifar100", tmp_path, "test", cache_dir=cache, download=False)
    assert ds.source == str(folder) and ds.classes == CIFAR100_CLASSES and ds.coarse_classes == CIFAR100_COARSE_CLASSES
    coarse_of = {ds.classes[f]: ds.coarse_classes[c] for f, c in zip(ds.labels.tolist(), ds.coarse_labels.tolist())}
    assert len(coarse_of) == 100 and len(set(coarse_of.values())) == 20
    assert coarse_of["beaver"] == "aquatic_mammals" and coarse_of["aquarium_fish"] == "fish"
    assert coarse_of["maple_tree"] == "trees" and coarse_of["tractor"] == "vehicles_2"
    assert coarse_of["bicycle"] == "vehicles_1" and coarse_of["crab"] == "non-insect_invertebrates"
    assert ds.coarse_classes[0] == "aquatic_mammals" and ds.coarse_classes[19] == "vehicles_2"


def test_cifar_folder_with_wrong_classes(tmp_path, cache):
    make_folder(tmp_path / "cifar10-jpg", {"train": {"cat": 1, "dog": 1}, "test": {"cat": 1, "dog": 1}})
    with pytest.raises(DatasetError, match="imagefolder") as e:
        load_dataset("cifar10", tmp_path, cache_dir=cache, download=False)
    assert "airplane" in error_of(e)


# ---------------------------------------------------------------------------------------------- generic image folders

LAYOUT = {"train": {"dog": 2, "cat": 3}, "test": {"cat": 1, "dog": 1}}


def test_imagefolder_nested_one_level(tmp_path, cache):
    make_folder(tmp_path / "root" / "mydata", LAYOUT)
    train = load_dataset("imagefolder", tmp_path / "root", "train", cache_dir=cache)
    assert train.classes == ["cat", "dog"] and train.labels.tolist() == [0, 0, 0, 1, 1]
    assert train.images.shape == (5, 3, 8, 8)
    assert [tuple(img[:, 0, 0].tolist()) for img in train.images] == [pixel("train", 0, i) for i in range(3)] + [
        pixel("train", 1, i) for i in range(2)]
    x = train.images.double() / 255
    assert np.allclose(train.mean, x.mean((0, 2, 3))) and np.allclose(train.std, x.std((0, 2, 3), unbiased=False))
    test = load_dataset("imagefolder", tmp_path / "root", "test", cache_dir=cache)
    assert test.labels.tolist() == [0, 1] and (test.mean, test.std) == (train.mean, train.std)  # train statistics


def test_imagefolder_tar_jpeg_and_mixed_extensions(tmp_path, cache):
    base = make_folder(tmp_path / "src", LAYOUT, ext=".JPG")
    write_image(base / "train" / "cat" / "extra.bmp", (1, 2, 3))
    write_image(base / "train" / "cat" / "more.webp", (1, 2, 3))
    (base / "train" / "cat" / "notes.txt").write_text("ignored")
    (base / "train" / "cat" / "._0000.JPG").write_bytes(b"macOS resource fork, ignored")
    archive = make_tar(base, tmp_path / "set.tar.gz", top_level=True)
    ds = load_dataset("imagefolder", archive, "train", cache_dir=cache)
    assert ds.classes == ["cat", "dog"] and ds.labels.tolist() == [0] * 5 + [1] * 2 and ds.source == str(archive)
    assert (ds.images[0, :, 4, 4].int() - torch.tensor(pixel("train", 0, 0))).abs().max() < 8  # JPEG is lossy


def test_image_size_resizes_and_crops(tmp_path, cache):
    base = make_folder(tmp_path / "d", LAYOUT)
    write_image(base / "train" / "cat" / "wide.png", (200, 0, 0), size=(20, 10))
    with pytest.raises(DatasetError, match="wide.png") as e:
        load_dataset("imagefolder", base, cache_dir=cache)
    assert "image_size" in error_of(e)
    ds = load_dataset("imagefolder", base, cache_dir=cache, image_size=6)
    assert ds.images.shape == (6, 3, 6, 6)


# ---------------------------------------------------------------------------------------------- cache

def test_cache_is_used_and_invalidated(tmp_path, cache, monkeypatch):
    base = make_folder(tmp_path / "d", LAYOUT)
    first = load_dataset("imagefolder", base, cache_dir=cache)
    assert len(list(cache.glob("imagefolder-train-*.pt"))) == 1 and len(list(cache.glob("imagefolder-test-*.pt"))) == 1

    def no_decoding(*args):
        raise AssertionError("decoded again although cached")

    with monkeypatch.context() as m:
        m.setattr(datasets_module, "_decode_image", no_decoding)
        assert torch.equal(load_dataset("imagefolder", base, "test", cache_dir=cache).labels, torch.tensor([0, 1]))
        assert torch.equal(load_dataset("imagefolder", base, cache_dir=cache).images, first.images)
    write_image(base / "train" / "dog" / "new.png", (9, 9, 9))  # the source changed: decode again
    assert len(load_dataset("imagefolder", base, cache_dir=cache)) == 6
    monkeypatch.setenv("OSESSL_CACHE", str(tmp_path / "env-cache"))
    load_dataset("imagefolder", base)
    assert list((tmp_path / "env-cache").glob("*.pt"))


def test_corrupt_cache_is_rebuilt(tmp_path, cache):
    base = make_folder(tmp_path / "d", LAYOUT)
    load_dataset("imagefolder", base, cache_dir=cache)
    for f in cache.glob("*.pt"):
        f.write_bytes(b"truncated")
    with pytest.warns(UserWarning, match="unreadable dataset cache"):
        assert len(load_dataset("imagefolder", base, cache_dir=cache)) == 5


# ---------------------------------------------------------------------------------------------- errors

def test_missing_root(tmp_path, cache):
    for name in ("imagefolder", "cifar10"):
        with pytest.raises(DatasetError, match="does not exist") as e:
            load_dataset(name, tmp_path / "nope", cache_dir=cache)
        error_of(e)


def test_unknown_name_and_split(tmp_path, cache):
    with pytest.raises(DatasetError, match="cifar10, cifar100, imagefolder") as e:
        load_dataset("mnist", tmp_path, cache_dir=cache)
    error_of(e)
    with pytest.raises(DatasetError, match="split"):
        load_dataset("cifar10", tmp_path, "val", cache_dir=cache)


def test_mismatched_classes_checked_even_for_one_split(tmp_path, cache):
    make_folder(tmp_path / "d", {"train": {"cat": 1, "dog": 1}, "test": {"cat": 1, "bird": 1}})
    with pytest.raises(DatasetError, match="differ between train and test") as e:
        load_dataset("imagefolder", tmp_path / "d", "train", cache_dir=cache)
    assert "dog" in error_of(e) and "bird" in error_of(e)


def test_corrupt_jpeg_is_named(tmp_path, cache):
    base = make_folder(tmp_path / "d", LAYOUT, ext=".jpg")
    good = (base / "test" / "dog" / "0000.jpg").read_bytes()
    (base / "test" / "dog" / "0000.jpg").write_bytes(good[: len(good) // 2])  # truncated
    with pytest.raises(DatasetError, match="cannot decode") as e:
        load_dataset("imagefolder", base, "train", cache_dir=cache)
    assert str(base / "test" / "dog" / "0000.jpg") in error_of(e)
    archive = make_tar(base, tmp_path / "bad.tar.gz")
    with pytest.raises(DatasetError) as e:
        load_dataset("imagefolder", archive, cache_dir=cache)
    assert f"{archive}:d/test/dog/0000.jpg" in error_of(e)


def test_empty_class_folder(tmp_path, cache):
    base = make_folder(tmp_path / "d", LAYOUT)
    (base / "test" / "cow").mkdir()
    (base / "train" / "cow").mkdir()
    (base / "train" / "cow" / "readme.txt").write_text("no images here")
    with pytest.raises(DatasetError, match="empty class folder train/cow") as e:
        load_dataset("imagefolder", base, cache_dir=cache)
    error_of(e)
    archive = make_tar(base, tmp_path / "empty.tar.gz")
    with pytest.raises(DatasetError, match="empty class folder"):
        load_dataset("imagefolder", archive, cache_dir=cache)


def test_tar_without_layout(tmp_path, cache):
    write_image(tmp_path / "flat" / "a.png")
    archive = make_tar(tmp_path / "flat", tmp_path / "flat.tar.gz")
    with pytest.raises(DatasetError, match="no train/<class>") as e:
        load_dataset("imagefolder", archive, cache_dir=cache)
    error_of(e)
    (tmp_path / "broken.tar.gz").write_bytes(b"\x1f\x8b not really gzip")
    with pytest.raises(DatasetError, match="cannot read archive"):
        load_dataset("imagefolder", tmp_path / "broken.tar.gz", cache_dir=cache)
    with pytest.raises(DatasetError, match="no train/ or test/"):
        load_dataset("imagefolder", tmp_path / "flat", cache_dir=cache)


def test_missing_split(tmp_path, cache):
    make_folder(tmp_path / "d", {"train": {"cat": 1}})
    assert len(load_dataset("imagefolder", tmp_path / "d", "train", cache_dir=cache)) == 1
    with pytest.raises(DatasetError, match="no test/ split"):
        load_dataset("imagefolder", tmp_path / "d", "test", cache_dir=cache)


def test_download_failure_offline(tmp_path, cache, monkeypatch):
    def offline(self):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torchvision.datasets.CIFAR10, "download", offline)
    start = time.perf_counter()
    with pytest.raises(DatasetError, match="download") as e:
        load_dataset("cifar100", tmp_path, cache_dir=cache)
    message = error_of(e)
    assert "no network" in message and str(tmp_path / "cifar-100-python") in message
    assert "cifar100-jpg.tar.gz" in message and time.perf_counter() - start < 10


def test_no_download_when_disabled(tmp_path, cache, monkeypatch):
    def must_not_run(self):
        raise AssertionError("download attempted with download=False")

    monkeypatch.setattr(torchvision.datasets.CIFAR10, "download", must_not_run)
    with pytest.raises(DatasetError, match="download=True") as e:
        load_dataset("cifar10", tmp_path, cache_dir=cache, download=False)
    error_of(e)


def test_superclass_table():
    assert len(CIFAR100_CLASSES) == 100 and len(CIFAR100_COARSE_CLASSES) == 20
    assert all(len(v) == 5 for v in datasets_module.CIFAR100_SUPERCLASSES.values())
