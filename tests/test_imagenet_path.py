"""The ImageNet-scale path end to end on generated ImageNet-like folders: the CLI with the imagenet100 recipe and
with a ResNet-50 image folder, exact mid-epoch resume on streamed data, 2 gloo ranks = 1 rank over an epoch of a
folder, and training steps of ResNet-50 / ViT-S/16 at 224 px."""
import json

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from osessl_core.cli import main
from osessl_core.config import TrainConfig
from osessl_core.data.imagefolder import IMAGENET100_CLASS_LIST, read_class_list
from osessl_core.data.synthetic import make_image_folder
from osessl_core.engine import Trainer

from test_distributed import assert_close, shutdown, snapshot

pytestmark = pytest.mark.slow
SMALL = ((160, 120), (120, 160), (150, 100))  # mixed shapes, kept small so CPU decoding stays cheap


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """4 classes x 8 images per split at mixed ImageNet-like sizes, with grey, CMYK, RGBA and 16-bit files."""
    return make_image_folder(tmp_path_factory.mktemp("folder"), classes=4, per_class=8, sizes=SMALL, odd=True)


def streamed(folder, run_dir, **kw) -> TrainConfig:
    """A narrow CIFAR-stem network on 32 px crops streamed from the folder: the streaming code path, cheaply."""
    base = dict(method="osessl", dataset="imagefolder", data_root=str(folder), stream=True, image_size=32,
                stem="cifar", width=8, proj_hidden=32, proj_out=16, batch_size=8, epochs=2, warmup_epochs=0,
                device="cpu", run_dir=str(run_dir), progress=False, eval_knn=False, log_every=1,
                loader_workers=0, method_args={"memory_size": 32, "k": 2})
    return TrainConfig(**{**base, **kw})


def test_cli_recipe_imagenet100_pretrains_and_evaluates(tmp_path):
    """`train --recipe imagenet100 --data-root <ImageNet root>`: the packaged class list picks the 100 classes."""
    names = read_class_list(IMAGENET100_CLASS_LIST)
    root = make_image_folder(tmp_path / "imagenet", classes=names + ["n99999999"], per_class=1, sizes=SMALL)
    run = tmp_path / "run"
    code = main(["train", "--recipe", "imagenet100", "--data-root", str(root), "--image-size", "64",
                 "--epochs", "1", "--batch-size", "50", "-m", "memory_size=128", "--loader-workers", "0",
                 "--device", "cpu", "--run-dir", str(run), "--no-progress"])
    assert code == 0
    config = json.loads((run / "config.json").read_text())
    assert config["recipe"] == "imagenet100" and config["resolved"]["data"] == "streamed"
    assert config["resolved"]["num_classes"] == 100 and config["arch"] == "resnet18"  # OSESSL Table 1
    exemplars = json.loads((run / "exemplars.json").read_text())
    assert sorted(exemplars["classes"]) == sorted(names) and exemplars["dataset"] == "imagenet100"
    result = json.loads((run / "eval.json").read_text())
    assert result["protocol"] == "imagenet" and result["knn_k"] == 20 and 0 <= result["knn_top1"] <= 100
    # semi-supervised fine-tuning of the checkpoint on a seeded 10 % split (one image per class here)
    assert main(["eval", "--run-dir", str(run), "--semisup", "0.1", "--semisup-epochs", "1", "--device", "cpu"]) == 0
    semi = json.loads((run / "semisup.json").read_text())
    assert semi["fraction"] == 0.1 and 0 <= semi["top1"] <= 100 and semi["step"] == 2


def test_cli_imagefolder_resnet50_pretrains_and_evaluates(tmp_path, folder):
    run = tmp_path / "run"
    code = main(["train", "--dataset", "imagefolder", "--arch", "resnet50", "--method", "resa", "--data-root",
                 str(folder), "--image-size", "64", "--epochs", "1", "--batch-size", "16", "--proj-hidden", "64",
                 "--proj-out", "32", "--loader-workers", "2", "--device", "cpu", "--run-dir", str(run),
                 "--eval-linear", "--linear-epochs", "1", "--no-progress"])
    assert code == 0
    resolved = json.loads((run / "config.json").read_text())["resolved"]
    assert resolved["data"] == "streamed" and resolved["image_size"] == 64 and not resolved["zero_pad"]
    result = json.loads((run / "eval.json").read_text())
    assert result["n_train"] == 36 and result["n_test"] == 36  # 32 drawn images + the 4 odd files per split
    assert {"knn_top1", "knn5_top1", "linear_top1", "linear_top5"} <= result.keys()


def test_streamed_resume_mid_epoch_is_exact(tmp_path, folder):
    """Stopped after 3 of the 8 steps (mid-epoch 1: 4 steps per epoch), resumed to 6: the same weights, banks and
    losses as 6 steps straight; no image repeated or skipped."""
    straight = Trainer(streamed(folder, tmp_path / "straight", max_steps=6))
    a = straight.fit()
    straight.close()
    first = Trainer(streamed(folder, tmp_path / "resumed", max_steps=3, ckpt_every=1))
    first.fit()
    first.close()
    again = Trainer(streamed(folder, tmp_path / "resumed", max_steps=6))
    assert again.step == 3
    b = again.fit()
    again.close()
    sa, sb = a.method.state_dict(), b.method.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    drop = ("seconds", "images_per_s")
    assert [{k: v for k, v in r.items() if k not in drop} for r in a.metrics[3:]] == \
        [{k: v for k, v in r.items() if k not in drop} for r in b.metrics]


def _rank(rank, world, init_file, folder, run_dir, out):
    torch.set_num_threads(1)
    torch.set_default_dtype(torch.float64)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        trainer = Trainer(streamed(folder, run_dir, batch_size=8 // world, max_steps=4))
        result = trainer.fit()
        if rank == 0:
            torch.save(snapshot(trainer, result), out)
    finally:
        shutdown()


def test_two_ranks_match_one_rank_over_an_epoch_of_the_folder(tmp_path, folder):
    """Each rank decodes only its share of every global batch; together they train what one rank trains."""
    torch.set_default_dtype(torch.float64)
    try:
        one = Trainer(streamed(folder, tmp_path / "one", max_steps=4))  # 36 images, global batch 8: one epoch
        ref = snapshot(one, one.fit())
    finally:
        torch.set_default_dtype(torch.float32)
    mp.spawn(_rank, nprocs=2, join=True, args=(2, str(tmp_path / "rdv"), str(folder), str(tmp_path / "two"),
                                               str(tmp_path / "two.pt")))
    two = torch.load(tmp_path / "two.pt")
    for a, b in zip(ref["losses"], two["losses"], strict=True):
        assert {k: pytest.approx(v, rel=1e-9, abs=1e-12) for k, v in a.items()} == b
    for name, v in ref["state"].items():
        assert_close(v, two["state"][name], name)


@pytest.mark.parametrize("arch", ["resnet50", "vit_s16"])
def test_training_steps_at_224(tmp_path, folder, arch):
    """ResNet-50 (ImageNet stem) and ViT-S/16 take a ReSA training step on 224 px streamed crops."""
    cfg = streamed(folder, tmp_path / arch, method="resa", arch=arch, stem="auto", width=64, image_size=224,
                   batch_size=2, max_steps=1, method_args={}, proj_hidden=64, proj_out=32)
    trainer = Trainer(cfg)
    result = trainer.fit()
    trainer.close()
    assert result.step == 1 and all(torch.isfinite(torch.tensor(r["loss"])) for r in result.metrics)
    assert trainer.resolved()["network_input"] == 224
