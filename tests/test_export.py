"""`export` writes a torchvision-compatible encoder: loaded into torchvision's resnet18 (through torch.hub and
hubconf.py) it gives the run's own evaluation features."""
import json
from pathlib import Path

import pytest
import torch

from osessl_core.cli import main
from osessl_core.engine import load_run
from osessl_core.engine.evaluate import eval_normalization
from osessl_core.eval import extract_features

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]


def test_exported_resnet_loads_into_torchvision_with_identical_features(tmp_path, cifar_root, capsys):
    run = tmp_path / "run"
    assert main(["train", "--method", "resa", "--data-root", cifar_root, "--subset", "32", "--batch-size", "16",
                 "--epochs", "1", "--warmup-epochs", "0", "--proj-hidden", "32", "--proj-out", "16", "--device",
                 "cpu", "--run-dir", str(run), "--no-progress", "--eval-test-subset", "20"]) == 0
    out = tmp_path / "encoder.pt"
    assert main(["export", "--run-dir", str(run), "--out", str(out)]) == 0
    card = json.loads(out.with_suffix(".json").read_text())
    assert card["torchvision_constructor"] == "resnet18" and card["method"] == "resa" and card["epochs"] == 1
    assert card["network"] == "momentum encoder" and card["knn_top1"] is not None and len(card["sha256"]) == 64
    assert card["stem"] == {"conv1_kernel_size": 3, "conv1_stride": 1, "conv1_padding": 2, "maxpool": False,
                            "width": 64}
    state = torch.load(out, weights_only=True)
    assert "layer2.0.downsample.0.weight" in state and not any("shortcut" in k or k.startswith("fc") for k in state)

    model = torch.hub.load(str(REPO), "resnet18_osessl", source="local", weights=str(out), trust_repo=True)
    import torchvision
    assert isinstance(model, torchvision.models.ResNet)
    trainer = load_run(run, device="cpu")
    images = trainer.train_set.images[:8]
    mean, std = eval_normalization(trainer.train_set)
    ours = extract_features(trainer.method.eval_encoder(), images, mean, std, device="cpu")
    x = (images.float() / 255 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    with torch.no_grad():
        theirs = model(x)
    assert theirs.shape == ours.shape == (8, 512)
    torch.testing.assert_close(theirs, ours.float(), rtol=1e-5, atol=1e-5)


def test_export_refuses_a_narrow_network(tmp_path, cifar_root, capsys):
    run = tmp_path / "narrow"
    assert main(["train", "--method", "resa", "--data-root", cifar_root, "--subset", "32", "--batch-size", "16",
                 "--epochs", "1", "--width", "8", "--proj-hidden", "32", "--proj-out", "16", "--device", "cpu",
                 "--run-dir", str(run), "--no-progress", "--no-eval-knn", "--max-steps", "1"]) == 0
    capsys.readouterr()
    assert main(["export", "--run-dir", str(run), "--out", str(tmp_path / "e.pt")]) == 2
    assert "64 channels wide" in capsys.readouterr().err
