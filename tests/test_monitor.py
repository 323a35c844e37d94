"""Training you can watch: the online k-NN monitor, TensorBoard logging and the metrics plot helper."""
import pytest
import torch

from osessl_core.engine import Trainer
from osessl_core.eval import plot_metrics, read_metrics

from test_train import tiny

pytestmark = pytest.mark.slow


def test_knn_monitor_and_tensorboard_leave_training_unchanged(tmp_path, cifar_root):
    common = dict(data_root=cifar_root, subset=64, batch_size=16, epochs=2, method_args={"memory_size": 32, "k": 2})
    watched = Trainer(tiny(tmp_path, "osessl", run_dir=str(tmp_path / "watched"), knn_monitor_every=1,
                           knn_monitor_train=64, knn_monitor_test=40, tensorboard=True, log_every=2, **common))
    a = watched.fit()
    plain = Trainer(tiny(tmp_path, "osessl", run_dir=str(tmp_path / "plain"), log_every=2, **common)).fit()
    sa, sb = a.method.state_dict(), plain.method.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)  # the monitor runs between steps and draws no randomness

    rows = read_metrics(a.run_dir)
    checked = [r for r in rows if "knn_monitor_top1" in r]
    assert [r["epoch"] for r in checked] == [1.0, 2.0] and all(0 <= r["knn_monitor_top1"] <= 100 for r in checked)
    assert not any("knn_monitor_top1" in r for r in read_metrics(plain.run_dir))

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(str(a.run_dir / "tensorboard"))
    events.Reload()
    loss = [(e.step, e.value) for e in events.Scalars("train/loss")]
    assert loss == [(r["step"], pytest.approx(r["loss"], rel=1e-6)) for r in rows]
    assert [e.step for e in events.Scalars("train/knn_monitor_top1")] == [r["step"] for r in checked]

    fig = plot_metrics({"watched": a.run_dir, "plain": plain.run_dir})
    titles = {ax.get_title() for ax in fig.axes}
    assert {"loss", "align", "lr", "momentum", "knn_monitor_top1"} <= titles


def test_foreign_image_folder_states_its_resolved_sizes_and_views(tmp_path, cifar_root, capsys):
    """CIFAR defaults (zero_pad, crop scales) applied to other data are printed once and kept in config.json."""
    import json
    from pathlib import Path

    from osessl_core.experiments import make_image_folder_from_cifar
    folder = make_image_folder_from_cifar(tmp_path / "folder", Path(cifar_root) / "cifar10-jpg.tar.gz",
                                          per_class_train=4, per_class_test=2, classes=["cat", "dog"])
    trainer = Trainer(tiny(tmp_path, "resa", dataset="imagefolder", data_root=str(folder), subset=None,
                           batch_size=4, max_steps=1))
    trainer.close()
    line = capsys.readouterr().err
    assert "imagefolder: 8 train images at 32px, 2 classes; network input 34px (zero_pad" in line
    assert "ViewAugment(kind='weak'" in line and "crop_scale=(0.2, 1.0)" in line
    resolved = json.loads((trainer.run_dir / "config.json").read_text())["resolved"]
    assert resolved["network_input"] == 34 and len(resolved["views"]) == 2
