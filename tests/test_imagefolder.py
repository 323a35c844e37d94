"""Streaming image folders: scanning, decoding, crops, deterministic batches, bad files (osessl_core.data.imagefolder
and .loader). Tiny synthetic folders only; the whole file runs in seconds."""
import re
import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import RandomResizedCrop
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from osessl_core.data.augment import CROP_UNIFORMS, RATIO, ViewAugment, crop_boxes
from osessl_core.data.datasets import DatasetError
from osessl_core.data.imagefolder import (IMAGENET100_CLASS_LIST, IMAGENET_STATS, eval_view, open_image_folder,
                                         train_views, view_boxes, view_uniforms)
from osessl_core.data.loader import eval_batches, view_batches
from osessl_core.data.order import BatchPlan
from osessl_core.data.synthetic import make_image_folder

VIEWS = [ViewAugment("weak", 48, *IMAGENET_STATS), ViewAugment("strong", 32, *IMAGENET_STATS, crop_scale=(0.08, 1))]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    # 3 classes x 4 JPEGs + the 4 odd files per split: 16 images per split
    return make_image_folder(tmp_path_factory.mktemp("folder"), classes=3, per_class=4, odd=True)


@pytest.fixture(scope="module")
def train(folder):
    return open_image_folder(folder, "train")


def _pil(path) -> torch.Tensor:
    with Image.open(path) as im:
        if im.mode.startswith("I;16"):
            return _scale16(np.array(im))
        return torch.from_numpy(np.array(im.convert("RGB"))).permute(2, 0, 1)


def _scale16(a) -> torch.Tensor:
    grey = torch.from_numpy((a.astype(np.int64) * 255 + 32767) // 65535).to(torch.uint8)
    return grey.expand(3, -1, -1)


def test_scan_and_read_match_pil(train):
    assert len(train) == 16 and train.classes == ["n00000000", "n00000001", "n00000002"]
    assert train.files == sorted(train.files) and train.labels.tolist() == [0] * 6 + [1] * 5 + [2] * 5
    assert (train.mean, train.std) == IMAGENET_STATS and train.image_size == 224
    for i in range(len(train)):
        x = train.read(i)
        assert x.dtype == torch.uint8 and x.shape[0] == 3
        diff = (x.int() - _pil(train.path(i)).int()).abs().max().item()
        # the same libjpeg-turbo IDCT in practice (measured 0); PNGs are lossless
        assert diff <= (2 if train.path(i).suffix.lower() in (".jpg", ".jpeg") else 0), train.files[i]


def test_odd_files_decode_to_rgb(train, tmp_path):
    odd = {f.split("/")[1]: train.read(i) for i, f in enumerate(train.files) if "/odd_" in f}
    assert set(odd) == {"odd_gray.JPEG", "odd_cmyk.jpg", "odd_rgba.png", "odd_16bit.png"}
    for name, x in odd.items():
        assert x.dtype == torch.uint8 and x.dim() == 3 and x.shape[0] == 3, name
    g = odd["odd_gray.JPEG"]
    assert torch.equal(g[0], g[1]) and torch.equal(g[1], g[2])
    # 16-bit: scaled to 8 bits (a clip would leave almost every pixel at 255)
    x16 = odd["odd_16bit.png"]
    assert x16.float().std() > 10 and (x16 == 255).float().mean() < 0.5
    # a palette PNG too
    a = np.random.default_rng(0).integers(0, 255, (20, 30, 3), dtype=np.uint8)
    (tmp_path / "train" / "c").mkdir(parents=True)
    Image.fromarray(a).convert("P").save(tmp_path / "train" / "c" / "p.png")
    ds = open_image_folder(tmp_path)
    assert torch.equal(ds.read(0), _pil(ds.path(0)))


def test_crop_statistics_match_torchvision():
    n, height, width = 3000, 375, 500  # a 500x375 image
    u = torch.stack([view_uniforms(7, 3, i, 1)[0] for i in range(n)])
    assert u.dtype == torch.float64 and u.shape == (n, CROP_UNIFORMS + 1)
    flips = (u[:, CROP_UNIFORMS] < 0.5).double().mean().item()
    assert abs(flips - 0.5) < 0.03
    for scale in [(0.08, 1.0), (0.2, 1.0)]:
        i, j, h, w = crop_boxes(u[:, :CROP_UNIFORMS], height, width, scale, RATIO)
        assert (i >= 0).all() and (j >= 0).all() and (i + h <= height).all() and (j + w <= width).all()
        ours = torch.stack([h * w / (height * width), torch.log(w / h)], 1).double()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            ref = torch.tensor([RandomResizedCrop.get_params(torch.empty(3, height, width), list(scale), list(RATIO))
                                for _ in range(n)], dtype=torch.float64)
        ref = torch.stack([ref[:, 2] * ref[:, 3] / (height * width), torch.log(ref[:, 3] / ref[:, 2])], 1)
        q = torch.tensor([0.1, 0.25, 0.5, 0.75, 0.9], dtype=torch.float64)
        assert torch.allclose(ours.mean(0), ref.mean(0), atol=0.02), (scale, ours.mean(0), ref.mean(0))
        assert torch.allclose(ours.quantile(q, dim=0), ref.quantile(q, dim=0), atol=0.03), scale
        # offsets are uniform over the free range
        free = (i.double() / (height - h).clamp_min(1))[(height - h) > 20]
        assert abs(free.mean().item() - 0.5) < 0.03


def test_train_views_and_eval_view(train):
    img = train.read(0)  # 375 x 500
    u = view_uniforms(0, 0, 0, len(VIEWS))
    out = train_views(img, VIEWS, u)
    assert [tuple(o.shape) for o in out] == [(3, 48, 48), (3, 32, 32)] and all(o.dtype == torch.uint8 for o in out)
    boxes, flips = view_boxes(375, 500, VIEWS, u)
    for o, v, (top, left, h, w), f in zip(out, VIEWS, boxes.tolist(), flips.tolist()):
        mode = InterpolationMode.BICUBIC if v.kind == "strong" else InterpolationMode.BILINEAR
        ref = TF.resized_crop(img, top, left, h, w, [v.size, v.size], interpolation=mode, antialias=True)
        assert torch.equal(o, TF.horizontal_flip(ref) if f else ref)
    assert torch.equal(train_views(img, VIEWS, u)[1], out[1])  # pure function of the uniforms
    assert torch.equal(view_uniforms(1, 2, 3, 2), view_uniforms(1, 2, 3, 2))
    assert not torch.equal(view_uniforms(1, 2, 3, 2), view_uniforms(1, 3, 2, 2))
    e = eval_view(img, 64)
    assert e.shape == (3, 64, 64) and e.dtype == torch.uint8
    ref = TF.center_crop(TF.resize(img, [73], antialias=True), [64, 64])  # round(64 * 256 / 224) = 73
    assert torch.equal(e, ref)


def _run(ds, **kw):
    return [(c, i) for c, i in view_batches(ds, VIEWS, seed=3, batch_size=3, **kw)]


def _same(a, b):
    return len(a) == len(b) and all(torch.equal(ia, ib) and all(torch.equal(x, y) for x, y in zip(ca, cb))
                                    for (ca, ia), (cb, ib) in zip(a, b))


def test_batches_deterministic_resumable_and_worker_independent(train):
    plan = BatchPlan(len(train), 3)  # 5 steps per epoch
    straight = _run(train, stop_step=8, workers=0)
    assert len(view_batches(train, VIEWS, 3, 3, start_step=2, stop_step=8)) == 6
    for step, (crops, ids) in enumerate(straight):
        assert torch.equal(ids, plan.rank_indices(3, step, 0))
        assert [tuple(c.shape) for c in crops] == [(3, 3, 48, 48), (3, 3, 32, 32)]
        assert all(c.dtype == torch.uint8 for c in crops)
    assert _same(_run(train, stop_step=8, workers=2), straight)
    assert _same(_run(train, start_step=3, stop_step=8, workers=0), straight[3:])  # resumed mid-epoch
    unbounded = view_batches(train, VIEWS, 3, 3, start_step=7, workers=0)
    assert _same([next(iter(unbounded))], straight[7:])
    with pytest.raises(TypeError):
        len(unbounded)
    # an image's crops are its own: the same in whichever step/position it appears
    first = {int(i): c[0][k] for c, ids in straight[:5] for k, i in enumerate(ids)}
    u = view_uniforms(3, 0, 7, 2)
    assert torch.equal(first[7], train_views(train.read(7), VIEWS, u)[0])


def test_two_ranks_cover_the_one_rank_epoch(train):
    steps = BatchPlan(len(train), 4).steps_per_epoch
    one = [ids for _, ids in view_batches(train, VIEWS, 5, 4, stop_step=steps, workers=0)]
    ranks = [[ids for _, ids in view_batches(train, VIEWS, 5, 2, world_size=2, rank=r, stop_step=steps, workers=0)]
             for r in (0, 1)]
    for s in range(steps):
        assert torch.equal(torch.cat([ranks[0][s], ranks[1][s]]), one[s])
    seen = torch.cat(one)
    assert len(seen.unique()) == len(seen) == steps * 4


def test_nvjpeg_path_on_cpu_matches_cpu_backend(train):
    # the nvjpeg backend (decode_jpeg on the device, here the CPU; the odd files take its CPU fallback)
    cpu = _run(train, stop_step=5, workers=0)
    nv = _run(train, stop_step=5, workers=0, backend="nvjpeg")
    for (ca, ia), (cb, ib) in zip(cpu, nv):
        assert torch.equal(ia, ib)
        for x, y in zip(ca, cb):
            # same boxes; pixels may differ slightly between resize implementations on a GPU (measured 0 on CPU)
            assert (x.int() - y.int()).abs().max() <= 2


def test_eval_batches_shards(folder):
    val = open_image_folder(folder, "test")  # only val/ exists: it stands in
    assert val.split == "val" and len(val) == 16
    shards = [list(eval_batches(val, size=32, batch_size=3, world_size=2, rank=r, workers=0)) for r in (0, 1)]
    ids = torch.cat([b[2] for s in shards for b in s])
    assert ids.tolist() == list(range(16))
    assert [len(s) for s in shards] == [3, 3]
    images, labels, idx = shards[1][0]
    assert images.shape == (3, 3, 32, 32) and images.dtype == torch.uint8
    assert torch.equal(labels, val.labels[idx]) and torch.equal(images[0], eval_view(val.read(8), 32))


def _small(root, n=3):
    for k in range(2):
        (root / "train" / f"c{k}").mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.new("RGB", (40 + 10 * i, 30), (80 * k, 10 * i, 50)).save(root / "train" / f"c{k}" / f"{i}.jpg")
    return root


def test_bad_files_fail_or_skip(tmp_path):
    root = _small(tmp_path)
    bad = root / "train" / "c0" / "1.jpg"
    bad.write_bytes(b"not a jpeg at all")
    ds = open_image_folder(root)
    with pytest.raises(DatasetError, match=re.escape(str(bad)) + ".*--bad-files skip") as e:
        ds.read(1)
    assert "\n" not in str(e.value)

    ds = open_image_folder(root, bad_files="skip")
    with pytest.warns(UserWarning, match=re.escape(str(bad))):
        x = ds.read(1)
    assert torch.equal(x, ds.read(2)) and ds.skipped == [str(bad)]  # substitute: the next index
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds.read(1)  # warned once per file
    # through the loader (workers report, the main process records): batches keep their shape
    ds = open_image_folder(root, bad_files="skip")
    with pytest.warns(UserWarning, match=re.escape(str(bad))):
        batches = list(view_batches(ds, VIEWS, 0, 6, stop_step=2, workers=0))
    assert all(c.shape[0] == 6 for crops, _ in batches for c in crops)
    assert ds.skipped == [str(bad)] and all(1 not in ids.tolist() for _, ids in batches)
    assert sorted(batches[0][1].tolist()) == [0, 2, 2, 3, 4, 5]
    # nvjpeg substitutes alike, also for a JPEG whose header reads but whose data is cut short
    # (the batched decoder refuses it and the main process decodes it as the cpu backend does)
    cut = root / "train" / "c1" / "0.jpg"
    Image.effect_noise((64, 48), 60).convert("RGB").save(cut, quality=90)
    cut.write_bytes(cut.read_bytes()[:-300])
    runs = {}
    for backend in ("cpu", "nvjpeg"):
        ds = open_image_folder(root, bad_files="skip")
        with pytest.warns(UserWarning):
            runs[backend] = list(view_batches(ds, VIEWS, 0, 6, stop_step=2, workers=0, backend=backend))
        assert sorted(ds.skipped) == [str(bad), str(cut)]
    assert _same(runs["cpu"], runs["nvjpeg"])


def test_layout_errors(tmp_path, folder):
    with pytest.raises(DatasetError, match="does not exist"):
        open_image_folder(tmp_path / "nope")
    flat = tmp_path / "flat"
    (flat / "val").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(flat / "val" / "ILSVRC2012_val_00000001.JPEG")
    with pytest.raises(DatasetError, match="valprep.sh") as e:
        open_image_folder(flat, "val")
    assert "\n" not in str(e.value) and str(flat / "val") in str(e.value)
    with pytest.raises(DatasetError, match="no train/ folder"):
        open_image_folder(flat, "train")
    root = _small(tmp_path / "small")
    (root / "train" / "empty").mkdir()
    with pytest.raises(DatasetError, match=re.escape(str(root / "train" / "empty"))):
        open_image_folder(root)
    (root / "train" / "empty").rmdir()
    (root / "train" / "c0" / "notes.txt").write_text("not an image")
    assert len(open_image_folder(root)) == 6
    none = tmp_path / "none"
    (none / "train").mkdir(parents=True)
    with pytest.raises(DatasetError, match="no class folders"):
        open_image_folder(none)


def test_class_lists(folder, tmp_path):
    ds = open_image_folder(folder, classes=["n00000002", "n00000000"])
    assert ds.classes == ["n00000000", "n00000002"] and len(ds) == 11
    assert set(ds.labels.tolist()) == {0, 1} and all(f.startswith(("n00000000/", "n00000002/")) for f in ds.files)
    listing = tmp_path / "classes.txt"
    listing.write_text("# two of three\n\nn00000001  some description\nn00000002 # inline comment\n")
    assert open_image_folder(folder, classes=listing).classes == ["n00000001", "n00000002"]
    with pytest.raises(DatasetError, match="n09999999") as e:
        open_image_folder(folder, classes=["n00000001", "n09999999"])
    assert "\n" not in str(e.value)
    sub = ds.subset([10, 0])
    assert sub.classes == ds.classes and torch.equal(sub.labels, ds.labels[[10, 0]])
    assert sub.path(0) == ds.path(10) and torch.equal(sub.read(1), ds.read(0))


def test_imagenet100_list():
    lines = [ln.strip() for ln in IMAGENET100_CLASS_LIST.read_text().splitlines()]
    assert lines[0].startswith("#") and "CMC" in lines[0]
    ids = [ln for ln in lines if ln and not ln.startswith("#")]
    assert len(ids) == len(set(ids)) == 100 and all(re.fullmatch(r"n\d{8}", i) for i in ids)
    assert ids[:3] == ["n02869837", "n01749939", "n02488291"] and ids[-1] == "n02090622"


def test_synthetic_deterministic_and_learnable(tmp_path):
    a = make_image_folder(tmp_path / "a", classes=3, per_class=4, sizes=((200, 150), (150, 200)), seed=4)
    b = make_image_folder(tmp_path / "b", classes=3, per_class=4, sizes=((200, 150), (150, 200)), seed=4)
    f = "train/n00000001/n00000001_1.JPEG"  # 6th image: sizes[5 % 2]
    assert (a / f).read_bytes() == (b / f).read_bytes()
    with Image.open(a / f) as im:
        assert im.size == (150, 200) and im.format == "JPEG"
    # 1-NN on 16 x 16 thumbnails beats chance (1/3) by far: the content depends on the class
    feats = {}
    for split in ("train", "val"):
        ds = open_image_folder(a, split)
        x = torch.stack([eval_view(ds.read(i), 16).flatten().float() for i in range(len(ds))])
        feats[split] = (x, ds.labels)
    d = torch.cdist(feats["val"][0], feats["train"][0])
    acc = (feats["train"][1][d.argmin(1)] == feats["val"][1]).float().mean().item()
    assert acc >= 0.75
