"""Bit-exact resume for every registered method: 3 steps, a checkpoint, a fresh Trainer, 3 more steps (across
the epoch boundary) equal 6 steps straight: weights, teachers, banks, queues, centers, BN statistics, and the
logged losses."""
import pytest
import torch

from osessl_core.engine import Trainer
from osessl_core.methods import METHODS

from test_train import tiny

pytestmark = pytest.mark.slow
SMALL_ARGS = {"osessl": {"memory_size": 16, "k": 2}, "sop": {"memory_size": 32, "anchors": 4, "k": 2},
              "msf": {"memory_size": 16}, "cmsf": {"memory_size": 16}, "dsa": {"eta": 4},
              "swav": {"queue_size": 16, "queue_start_epoch": 0, "num_prototypes": 16},
              "dino": {"num_prototypes": 16}}


def run(cifar_root, tmp_path, method, name, max_steps):
    cfg = tiny(tmp_path, method, data_root=cifar_root, run_dir=str(tmp_path / name), subset=32, batch_size=8,
               epochs=2, proj_hidden=16, proj_out=8, max_steps=max_steps, method_args=SMALL_ARGS.get(method, {}))
    trainer = Trainer(cfg)
    result = trainer.fit()
    trainer.close()
    return result


@pytest.mark.parametrize("method", sorted(METHODS))
def test_resume_is_bit_exact(tmp_path, cifar_root, method):
    straight = run(cifar_root, tmp_path, method, "straight", 6)
    run(cifar_root, tmp_path, method, "resumed", 3)
    resumed = run(cifar_root, tmp_path, method, "resumed", 6)
    a, b = straight.method.state_dict(), resumed.method.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    drop = ("seconds", "images_per_s")
    assert [{k: v for k, v in r.items() if k not in drop} for r in straight.metrics[3:]] == \
        [{k: v for k, v in r.items() if k not in drop} for r in resumed.metrics]
