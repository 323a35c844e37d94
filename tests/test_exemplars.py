"""select_exemplars / save_exemplars / load_exemplars: the one-shot labeled split."""
import json

import pytest
import torch

from osessl_core.data import DatasetError, load_exemplars, save_exemplars, select_exemplars

LABELS = torch.arange(5).repeat(20)[torch.randperm(100, generator=torch.Generator().manual_seed(3))]  # 20 per class


def test_one_per_class_in_class_order():
    idx = select_exemplars(LABELS, num_classes=5)
    assert idx.dtype == torch.int64 and idx.shape == (5,)
    assert LABELS[idx].tolist() == [0, 1, 2, 3, 4]
    assert torch.equal(select_exemplars(LABELS), idx)  # num_classes inferred from the labels


def test_deterministic_per_seed_and_different_across_seeds():
    assert torch.equal(select_exemplars(LABELS, seed=7), select_exemplars(LABELS, seed=7))
    draws = {tuple(select_exemplars(LABELS, seed=s).tolist()) for s in range(5)}
    assert len(draws) > 1
    torch.manual_seed(0)  # the global RNG plays no part
    a = select_exemplars(LABELS, seed=1)
    torch.manual_seed(123)
    assert torch.equal(a, select_exemplars(LABELS, seed=1))


def test_k_shot():
    idx = select_exemplars(LABELS, num_classes=5, shots=4, seed=2)
    assert idx.shape == (20,) and idx.unique().numel() == 20
    assert LABELS[idx].tolist() == [c for c in range(5) for _ in range(4)]
    # For a seed, the 1-shot exemplars are the first of the k-shot ones.
    assert idx.view(5, 4)[:, 0].tolist() == select_exemplars(LABELS, shots=1, seed=2).tolist()
    assert len(select_exemplars(LABELS, shots=20)) == 100  # every image


def test_uniform_within_class():
    labels = torch.tensor([0] * 4 + [1])
    counts = torch.bincount(torch.stack([select_exemplars(labels, seed=s)[0] for s in range(400)]), minlength=4)
    assert (counts > 60).all()  # each of the 4 images of class 0 is drawn about 100 times


def test_errors():
    with pytest.raises(DatasetError, match="fewer than shots"):
        select_exemplars(LABELS, shots=21)
    with pytest.raises(DatasetError, match="class 5 has 0 images"):
        select_exemplars(LABELS, num_classes=6)
    with pytest.raises(DatasetError, match="go up to 4"):
        select_exemplars(LABELS, num_classes=3)
    with pytest.raises(DatasetError, match="shots"):
        select_exemplars(LABELS, shots=0)
    with pytest.raises(DatasetError, match="1-D integer"):
        select_exemplars(torch.tensor([]))
    with pytest.raises(DatasetError, match=">= 0"):
        select_exemplars(torch.tensor([0, -1]))


def test_save_load_round_trip(tmp_path):
    classes = ["a", "b", "c", "d", "e"]
    idx = select_exemplars(LABELS, shots=2, seed=4)
    path = tmp_path / "runs" / "exemplars.json"
    save_exemplars(path, idx, LABELS, classes, seed=4, shots=2, dataset="cifar10", subset=100)
    loaded = load_exemplars(path)
    assert loaded.dtype == torch.int64 and torch.equal(loaded, idx)
    record = json.loads(path.read_text())  # the trainer's exemplars.json format
    assert record == {"exemplar_indices": idx.tolist(), "shots": 2, "labels": LABELS[idx].tolist(),
                      "classes": ["a", "a", "b", "b", "c", "c", "d", "d", "e", "e"], "seed": 4,
                      "dataset": "cifar10", "subset": 100}
    assert [p.name for p in path.parent.iterdir()] == ["exemplars.json"]  # no temporary file left behind


def test_load_reads_the_old_indices_key(tmp_path):
    (tmp_path / "old.json").write_text(json.dumps({"seed": 0, "shots": 1, "indices": [3, 1, 2]}))
    assert load_exemplars(tmp_path / "old.json").tolist() == [3, 1, 2]


@pytest.mark.slow
def test_load_reads_a_run_directory_and_save_writes_the_same_file(tmp_path, cifar_root):
    from test_train import tiny

    from osessl_core.engine import Trainer
    from osessl_core.engine.trainer import load_train_data
    cfg = tiny(tmp_path, "osessl", data_root=cifar_root, max_steps=1, method_args={"memory_size": 64})
    result = Trainer(cfg).fit()
    written = result.run_dir / "exemplars.json"
    loaded = load_exemplars(written)
    assert loaded.dtype == torch.int64 and loaded.tolist() == result.method.exemplar_indices.tolist()
    train_set = load_train_data(cfg)
    save_exemplars(tmp_path / "again.json", loaded, train_set.labels, train_set.classes, seed=cfg.seed, shots=1,
                   dataset=cfg.dataset, subset=cfg.subset)
    assert json.loads((tmp_path / "again.json").read_text()) == json.loads(written.read_text())


def test_save_load_errors(tmp_path):
    with pytest.raises(DatasetError, match="full dataset labels"):
        save_exemplars(tmp_path / "x.json", torch.tensor([0, 7]), torch.tensor([0, 1]), ["a", "b"], 0, 1)
    with pytest.raises(DatasetError, match="cannot read exemplars"):
        load_exemplars(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text('{"indices": [1, "x"]}')
    with pytest.raises(DatasetError, match="cannot read exemplars"):
        load_exemplars(tmp_path / "bad.json")
