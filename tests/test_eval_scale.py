"""Evaluation at ImageNet scale, on tiny CPU data: train-chunked weighted kNN, streamed features (sharded and
gathered over 2 gloo ranks), the ImageNet linear protocol and 1 % / 10 % semi-supervised fine-tuning.

The streaming loader (osessl_core.data.loader / imagefolder) is exercised through a minimal stand-in with the
same interface, so these tests pin down the evaluation code and not the loader's internals.
"""
import math
import sys
import types

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from osessl_core.data.augment import CROP_UNIFORMS, crop_boxes, crop_resize
from osessl_core.data.datasets import DatasetError
from osessl_core.data.order import BatchPlan
from osessl_core.distributed import shard_bounds
from osessl_core.eval import extract_features
from osessl_core.eval.imagenet_linear import default_milestones, imagenet_linear
from osessl_core.eval.knn import knn_accuracies, knn_classify, knn_neighbours
from osessl_core.eval.semisup import labelled_indices, read_subset_file, semisup_finetune
from osessl_core.eval.streaming import stream_features
from test_eval import _slow_knn

MEAN, STD = (0.45, 0.45, 0.45), (0.25, 0.25, 0.25)
COLOURS = torch.tensor([[220, 40, 40], [40, 220, 40], [40, 40, 220]], dtype=torch.float32)


# ------------------------------------------------------------------ a fake folder dataset and a stand-in loader
class FakeFolder:
    """The dataset interface of data.imagefolder: images of varying size, one dominant colour per class."""

    def __init__(self, n, num_classes=3, seed=0, _items=None):
        if _items is None:
            g = torch.Generator().manual_seed(seed)
            labels = torch.arange(n) % num_classes
            items = []
            for i, y in enumerate(labels.tolist()):
                h, w = 18 + i % 5, 20 + i % 7
                noise = torch.randint(-35, 36, (3, h, w), generator=g).float()
                img = (COLOURS[y].view(3, 1, 1) + noise).clamp(0, 255).to(torch.uint8)
                items.append((img, y, f"c{y}/c{y}_{seed}_{i}.JPEG"))
            self.classes = [f"c{c}" for c in range(num_classes)]
        else:
            items, self.classes = _items
        self._items = items
        self.labels = torch.tensor([y for _, y, _ in items], dtype=torch.long)
        self.files = [f for _, _, f in items]
        self.mean, self.std = MEAN, STD

    def __len__(self):
        return len(self._items)

    @property
    def num_classes(self):
        return len(self.classes)

    def read(self, i):
        return self._items[i][0]

    def subset(self, indices):
        return FakeFolder(0, _items=([self._items[int(i)] for i in indices], self.classes))


def _eval_view(img, size=224):
    _, h, w = img.shape
    short = round(size * 256 / 224)
    oh, ow = (short, max(short, round(w * short / h))) if h <= w else (max(short, round(h * short / w)), short)
    x = F.interpolate(img[None].float(), size=(oh, ow), mode="bilinear", align_corners=False, antialias=True)
    top, left = (oh - size) // 2, (ow - size) // 2
    return x[0, :, top:top + size, left:left + size].round().clamp(0, 255).to(torch.uint8)


def _view_uniforms(seed, epoch, index, num_views, per_view=CROP_UNIFORMS + 1):
    g = torch.Generator().manual_seed(((seed * 1_000_003 + epoch) * 10_000_019 + index) % (2 ** 63))
    return torch.rand(num_views, per_view, generator=g)


def _train_views(img, views, u):
    x = img[None].float() / 255
    out = []
    for v, uv in zip(views, u):
        boxes = crop_boxes(uv[None, :CROP_UNIFORMS], img.shape[1], img.shape[2], v.crop_scale)
        y = crop_resize(x, boxes, v.size, (uv[None, CROP_UNIFORMS] < 0.5))
        out.append((y[0] * 255).round().clamp(0, 255).to(torch.uint8))
    return out


def _eval_batches(dataset, size=224, batch_size=256, world_size=1, rank=0, workers=None, device="cpu"):
    lo, hi = shard_bounds(len(dataset), rank, world_size)
    for s in range(lo, hi, batch_size):
        ids = torch.arange(s, min(s + batch_size, hi))
        yield (torch.stack([_eval_view(dataset.read(i), size) for i in ids.tolist()]).to(device),
               dataset.labels[ids], ids)


def _view_batches(dataset, views, seed, batch_size, world_size=1, rank=0, start_step=0, stop_step=None,
                  workers=None, device="cpu"):
    plan = BatchPlan(len(dataset), batch_size, world_size)
    for step in range(start_step, stop_step):
        ids = plan.rank_indices(seed, step, rank)
        epoch = plan.locate(step)[0]
        cut = [_train_views(dataset.read(i), views, _view_uniforms(seed, epoch, i, len(views))) for i in ids.tolist()]
        yield [torch.stack([c[v] for c in cut]).to(device) for v in range(len(views))], ids


def install_standins(setitem=sys.modules.__setitem__):
    loader = types.ModuleType("osessl_core.data.loader")
    loader.eval_batches, loader.view_batches = _eval_batches, _view_batches
    folder = types.ModuleType("osessl_core.data.imagefolder")
    folder.eval_view, folder.train_views, folder.view_uniforms = _eval_view, _train_views, _view_uniforms
    setitem("osessl_core.data.loader", loader)
    setitem("osessl_core.data.imagefolder", folder)


@pytest.fixture
def real_loader():
    """Requested by a test that runs against osessl_core.data.loader itself instead of the stand-in."""


@pytest.fixture(autouse=True)
def standin_loader(request, monkeypatch):
    if "real_loader" not in request.fixturenames:
        install_standins(lambda k, v: monkeypatch.setitem(sys.modules, k, v))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # 2 shared cores: no oversubscription between the forked ranks
    yield
    torch.set_num_threads(threads)  # later modules compare bit-exactly against 2-thread subprocesses


def tiny_encoder(seed=0, bn=True):
    torch.manual_seed(seed)
    layers = [nn.Conv2d(3, 6, 3, padding=1)] + ([nn.BatchNorm2d(6)] if bn else []) + [
        nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    enc = nn.Sequential(*layers)
    if bn:  # non-trivial running statistics, so eval-mode BN is visible in the features
        enc[1].running_mean.uniform_(-0.5, 0.5)
        enc[1].running_var.uniform_(0.5, 2.0)
    return enc


# ---------------------------------------------------------------------------------------------- kNN
def _data(n_train=300, n_test=70, d=16, classes=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, d, generator=g)
    ytr, yte = torch.randint(0, classes, (n_train,), generator=g), torch.randint(0, classes, (n_test,), generator=g)
    return (centres[ytr] + 1.2 * torch.randn(n_train, d, generator=g), ytr,
            centres[yte] + 1.2 * torch.randn(n_test, d, generator=g), yte)


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_train_chunked_knn_matches_sklearn(metric):
    from sklearn.neighbors import KNeighborsClassifier
    tr, ytr, te, yte = _data()
    ks = (1, 5, 10, 20)
    acc = knn_accuracies(tr, ytr, te, yte, ks=ks, metric=metric, weighting="uniform", train_chunk=37, test_chunk=13)
    assert list(acc) == list(ks)
    for k in ks:
        ref = KNeighborsClassifier(k, metric=metric, algorithm="brute").fit(tr.double().numpy(), ytr.numpy())
        pred = torch.from_numpy(ref.predict(te.double().numpy()))
        assert torch.equal(knn_classify(tr, ytr, te, k=k, metric=metric, chunk_size=13, train_chunk=37), pred)
        assert acc[k] == pytest.approx((pred == yte).double().mean().item() * 100, abs=1e-9)


def test_exp_weighted_knn_one_pass_matches_literal_loop_and_half_storage():
    tr, ytr, te, yte = _data(n_train=150, n_test=30, seed=1)
    acc = knn_accuracies(tr, ytr, te, yte, train_chunk=16, test_chunk=7)  # defaults: cosine, exp, T=0.07
    for k in (5, 10, 20):
        ref = _slow_knn(tr, ytr, te, k, "cosine", "exp", 0.07)
        assert acc[k] == pytest.approx((ref == yte).double().mean().item() * 100, abs=1e-9)
    # Euclidean neighbours still weighted by their cosine similarity (as knn_classify), merged across chunks.
    ref = _slow_knn(tr, ytr, te, 10, "euclidean", "exp", 0.1)
    assert torch.equal(knn_classify(tr, ytr, te, k=10, metric="euclidean", weighting="exp", temperature=0.1,
                                    chunk_size=9, train_chunk=11), ref)
    # float16 storage: neighbours of the rounded features, scored in float32.
    half = knn_accuracies(tr.half(), ytr, te.half(), yte, train_chunk=16)
    assert half == knn_accuracies(tr.half().float(), ytr, te.half().float(), yte, train_chunk=150)
    s, i = knn_neighbours(tr.half(), te.half(), 20, train_chunk=16)
    assert s.dtype == torch.float32 and i.shape == (30, 20) and bool((s[:, :-1] >= s[:, 1:]).all())
    full = F.normalize(te.half().float(), dim=1) @ F.normalize(tr.half().float(), dim=1).T
    assert torch.allclose(s, full.topk(20, dim=1).values, atol=1e-6)


def test_knn_default_path_unchanged_and_validation():
    tr, ytr, te, _ = _data(n_train=80, n_test=20, seed=2)
    for kw in (dict(k=5), dict(k=7, metric="cosine", weighting="exp")):
        assert torch.equal(knn_classify(tr, ytr, te, **kw), knn_classify(tr, ytr, te, train_chunk=9, **kw))
    with pytest.raises(ValueError, match="k must be"):
        knn_accuracies(tr, ytr, te, ytr[:20], ks=(5, 81))
    with pytest.raises(ValueError, match="chunk"):
        knn_accuracies(tr, ytr, te, ytr[:20], train_chunk=0)


# --------------------------------------------------------------------------------------- streamed features
def test_stream_features_eval_mode_shards_and_half_storage():
    ds = FakeFolder(11)
    enc = tiny_encoder()
    enc.train()
    stats = enc[1].running_mean.clone()
    feats, labels = stream_features(enc, ds, size=16, batch_size=4)
    assert enc.training and enc[1].training and torch.equal(enc[1].running_mean, stats)  # eval mode, restored
    images = torch.stack([_eval_view(ds.read(i), 16) for i in range(len(ds))])
    ref = extract_features(enc, images, MEAN, STD)
    assert torch.allclose(feats, ref, atol=1e-6) and torch.equal(labels, ds.labels)
    # Without a process group each rank returns its contiguous shard; the shards tile the dataset in order.
    parts = [stream_features(enc, ds, size=16, batch_size=3, world_size=2, rank=r, gather=False) for r in (0, 1)]
    assert [len(p[0]) for p in parts] == [6, 5]
    assert torch.allclose(torch.cat([p[0] for p in parts]), ref, atol=1e-6)
    half, _ = stream_features(enc, ds, size=16, batch_size=4, dtype=torch.float16)
    assert half.dtype == torch.float16 and torch.allclose(half.float(), ref, atol=1e-2)
    with pytest.raises(ValueError, match="process group"):
        stream_features(enc, ds, size=16, world_size=2, rank=0)


# ------------------------------------------------------------------------------------ linear protocol
def test_imagenet_linear_learns_resumes_and_checkpoints(tmp_path):
    train, val = FakeFolder(24, seed=1), FakeFolder(12, seed=2)
    enc = tiny_encoder()
    kw = dict(epochs=3, lr=1.0, batch_size=8, size=16, seed=3)
    full = imagenet_linear(enc, train, val, checkpoint=tmp_path / "a.pt", **kw)
    assert full["complete"] and full["top1"] == 100.0 and full["top5"] == 100.0  # colours are separable
    assert full["epochs"] == 3 and full["steps_per_epoch"] == 3 and full["milestones"] == [2, 2]
    assert default_milestones(100) == [60, 80] and enc.training
    # Stop after one epoch, then rerun with the same checkpoint: identical to the uninterrupted run.
    part = imagenet_linear(enc, train, val, checkpoint=tmp_path / "b.pt", stop_after_epochs=1, **kw)
    assert not part["complete"] and part["epochs_done"] == 1 and "top1" not in part
    resumed = imagenet_linear(enc, train, val, checkpoint=tmp_path / "b.pt", **kw)
    assert resumed["train_loss"] == full["train_loss"] and resumed["top1"] == full["top1"]
    a, b = torch.load(tmp_path / "a.pt"), torch.load(tmp_path / "b.pt")
    assert a["epoch"] == b["epoch"] == 3
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    with pytest.raises(ValueError, match="different run"):
        imagenet_linear(enc, train, val, checkpoint=tmp_path / "a.pt", **dict(kw, lr=2.0))


# ---------------------------------------------------------------------------------------- semi-supervised
def test_labelled_split_subset_file_and_seeded_fraction(tmp_path):
    ds = FakeFolder(30)
    f = tmp_path / "1percent.txt"
    f.write_text("\n".join([ds.files[4].split("/")[1], ds.files[2].split("/")[1], "", ds.files[4].split("/")[1]]))
    assert read_subset_file(f, ds).tolist() == [2, 4]
    f.write_text("c0_0_0.JPEG\nn01440764_10026.JPEG\nn0_x.JPEG\nn1_y.JPEG\nn2_z.JPEG\n")
    with pytest.raises(DatasetError, match=r"4 of the 5 images .* e\.g\. n01440764_10026\.JPEG, n0_x\.JPEG, n1_y"):
        labelled_indices(ds, subset_file=f)
    idx = labelled_indices(ds, fraction=0.2, seed=5)
    assert torch.bincount(ds.labels[idx]).tolist() == [2, 2, 2]  # round(0.2 * 10) per class
    assert torch.equal(idx, labelled_indices(ds, fraction=0.2, seed=5))
    assert not torch.equal(idx, labelled_indices(ds, fraction=0.2, seed=6))
    with pytest.raises(ValueError, match="exactly one"):
        labelled_indices(ds, fraction=0.1, subset_file=f)


def test_semisup_finetune_trains_a_copy(tmp_path):
    train, val = FakeFolder(30, seed=1), FakeFolder(9, seed=2)
    body = tiny_encoder()
    before = {k: v.clone() for k, v in body.state_dict().items()}
    out = semisup_finetune(body, train, val, fraction=0.4, epochs=2, lr=0.5, batch_size=8, size=16,
                           checkpoint=tmp_path / "s.pt")
    assert out["complete"] and out["n_labelled"] == 12 and out["batch_size"] == 8 and out["steps_per_epoch"] == 1
    assert out["top1"] >= 100 / 3 and math.isfinite(out["final_train_loss"])
    assert all(torch.equal(v, body.state_dict()[k]) for k, v in before.items())  # the caller's body is untouched
    state = torch.load(tmp_path / "s.pt")
    assert state["epoch"] == 2 and not torch.equal(state["model"]["body.0.weight"], before["0.weight"])


# ----------------------------------------------------------------------------- 2 gloo ranks == 1 rank
def _dist_run(train, val):
    enc = tiny_encoder(bn=False)  # no BN: per-rank batch statistics would differ from one rank's by design
    feats = stream_features(enc, train, size=16, batch_size=4)
    rank0_only = stream_features(enc, val, size=16, batch_size=2, on_all_ranks=False)
    lin = imagenet_linear(enc, train, val, epochs=2, lr=1.0, batch_size=8, size=16, seed=1)
    semi = semisup_finetune(enc, train, val, fraction=0.5, epochs=1, lr=0.5, batch_size=8, size=16, seed=1)
    return {"feats": feats, "rank0_only": rank0_only, "lin": lin, "semi": semi}


def _worker(rank, world, init_file, out):
    torch.set_num_threads(1)  # first: a forked child must not use the parent's OpenMP pool (DataLoader's rule)
    install_standins()
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        res = _dist_run(FakeFolder(21, seed=1), FakeFolder(7, seed=2))
        torch.save(res, f"{out}.{rank}")
    finally:
        dist.barrier()
        dist.destroy_process_group()


def test_two_gloo_ranks_match_one_process(tmp_path):
    one = _dist_run(FakeFolder(21, seed=1), FakeFolder(7, seed=2))
    # fork, not spawn: a spawned rank re-imports torch, matplotlib (osessl_core.eval) and torch._dynamo (the
    # first optimiser), ~10 s per rank on 2 busy cores; forked ranks inherit them and finish in under a second.
    mp.start_processes(_worker, nprocs=2, join=True, args=(2, str(tmp_path / "rdv"), str(tmp_path / "r")),
                       start_method="fork")
    for r in (0, 1):
        two = torch.load(f"{tmp_path}/r.{r}", weights_only=False)
        assert torch.allclose(two["feats"][0], one["feats"][0], atol=1e-6)  # gathered in dataset order
        assert torch.equal(two["feats"][1], one["feats"][1])
        if r == 0:
            assert torch.allclose(two["rank0_only"][0], one["rank0_only"][0], atol=1e-6)
        else:
            assert two["rank0_only"] == (None, None)
        for key in ("lin", "semi"):
            assert two[key]["world_size"] == 2 and two[key]["steps_per_epoch"] == one[key]["steps_per_epoch"]
            assert two[key]["train_loss"] == pytest.approx(one[key]["train_loss"], rel=1e-4)
            assert two[key]["top1"] == one[key]["top1"] and two[key]["top5"] == one[key]["top5"]


# ------------------------------------------------------------------------ the real streaming loader
def test_protocols_on_a_real_streamed_image_folder(tmp_path, real_loader):
    synthetic = pytest.importorskip("osessl_core.data.synthetic")
    from osessl_core.data.imagefolder import eval_view, open_image_folder
    root = synthetic.make_image_folder(tmp_path / "folder", classes=3, per_class=5, sizes=((40, 30), (30, 44)))
    train, val = open_image_folder(root, "train"), open_image_folder(root, "val")
    enc = tiny_encoder()
    feats, labels = stream_features(enc, train, size=16, batch_size=4, workers=0)
    images = torch.stack([eval_view(train.read(i), 16) for i in range(len(train))])
    assert torch.allclose(feats, extract_features(enc, images, train.mean, train.std), atol=1e-5)
    assert torch.equal(labels, train.labels)
    lin = imagenet_linear(enc, train, val, epochs=1, lr=1.0, batch_size=5, size=16, workers=0)
    assert lin["complete"] and lin["steps_per_epoch"] == 3 and 0 <= lin["top1"] <= 100
    subset = tmp_path / "subset.txt"
    subset.write_text("\n".join(f.split("/")[1] for f in train.files[::3]))  # SimCLR's format: bare file names
    semi = semisup_finetune(enc, train, val, subset_file=subset, epochs=1, lr=0.1, batch_size=4, size=16,
                            workers=0)
    assert semi["complete"] and semi["n_labelled"] == 5 and semi["batch_size"] == 4 and "top5" in semi
