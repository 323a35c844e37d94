"""End to end on a real CIFAR-10 subset, on CPU: a few steps with a narrow ResNet-18."""
import json
import subprocess
import sys

import pytest
import torch

from osessl_core.config import TrainConfig
from osessl_core.engine import IncompatibleCheckpointError, NonFiniteLossError, Trainer, train
from osessl_core.methods import METHODS

pytestmark = pytest.mark.slow


def tiny(tmp_path, method="osessl", **kw):
    base = dict(method=method, dataset="cifar10", subset=128, batch_size=32, epochs=2, width=8, proj_hidden=64,
                proj_out=32, warmup_epochs=0, device="cpu", run_dir=str(tmp_path / method), progress=False,
                eval_knn=False, log_every=1, method_args={"memory_size": 64} if method == "osessl" else {})
    base.update(kw)
    return TrainConfig(**base)


@pytest.mark.parametrize("method", ["resa", "osessl"])
def test_loss_finite_and_decreasing(tmp_path, cifar_root, method):
    cfg = tiny(tmp_path, method, data_root=cifar_root, epochs=10, base_lr=2.0)
    result = train(cfg)
    losses = [row["loss"] for row in result.metrics]
    assert len(losses) == 40 and all(torch.isfinite(torch.tensor(losses)))
    assert sum(losses[-8:]) / 8 < sum(losses[:8]) / 8, losses
    if method == "osessl":
        assert {"cluster", "align", "disp", "mix_proto", "mix_ins"} <= set(result.metrics[-1])
        assert int(result.method.memory.filled) == 64


def test_checkpoint_and_resume_continue_with_identical_state(tmp_path, cifar_root):
    straight = Trainer(tiny(tmp_path / "a", data_root=cifar_root, max_steps=6, ckpt_every=3)).fit()
    first = Trainer(tiny(tmp_path / "b", data_root=cifar_root, max_steps=3, ckpt_every=3)).fit()
    run_dir = first.run_dir
    assert (run_dir / "checkpoint.pt").exists() and (run_dir / "exemplars.json").exists()
    assert json.loads((run_dir / "config.json").read_text())["method"] == "osessl"
    resumed_trainer = Trainer(tiny(tmp_path / "b", data_root=cifar_root, max_steps=6, ckpt_every=3))
    assert resumed_trainer.step == 3
    resumed = resumed_trainer.fit()
    a, b = straight.method.state_dict(), resumed.method.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k            # weights, momentum nets, BN stats and the memory bank
    steps = [json.loads(l)["step"] for l in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]


def test_incompatible_checkpoint_is_refused(tmp_path, cifar_root):
    Trainer(tiny(tmp_path, data_root=cifar_root, max_steps=1)).fit()
    with pytest.raises(IncompatibleCheckpointError, match="width"):
        Trainer(tiny(tmp_path, data_root=cifar_root, width=16, max_steps=2))


def test_non_finite_loss_aborts_naming_the_term(tmp_path, cifar_root):
    trainer = Trainer(tiny(tmp_path, data_root=cifar_root, max_steps=2))
    real = trainer.loss_fn

    def poisoned(views):
        terms, aux = real(views)
        terms["align"] = terms["align"] * float("nan")
        return terms, aux

    trainer.loss_fn = poisoned
    with pytest.raises(NonFiniteLossError, match="'align'"):
        trainer.fit()
    assert not (trainer.run_dir / "checkpoint.pt").exists()


def test_unknown_method_parameter_is_rejected(tmp_path, cifar_root):
    with pytest.raises(ValueError, match="unknown parameter"):
        Trainer(tiny(tmp_path, data_root=cifar_root, method_args={"tau_z": 0.1}))


def test_cli_train_writes_a_complete_run_directory(tmp_path, cifar_root):
    run = tmp_path / "cli"
    cmd = [sys.executable, "-m", "osessl_core", "train", "--method", "osessl", "--data-root", cifar_root,
           "--subset", "128", "--batch-size", "32", "--epochs", "1", "--width", "8", "--proj-hidden", "64",
           "--proj-out", "32", "--device", "cpu", "--run-dir", str(run), "--no-progress", "--eval-test-subset",
           "200", "-m", "memory_size=64", "-m", "k=4"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    for name in ("config.json", "provenance.json", "exemplars.json", "metrics.jsonl", "checkpoint.pt", "eval.json"):
        assert (run / name).exists(), name
    ev = json.loads((run / "eval.json").read_text())
    assert 0 <= ev["knn_top1"] <= 100 and ev["n_test"] == 200
    ex = json.loads((run / "exemplars.json").read_text())
    assert sorted(ex["labels"]) == list(range(10))
    assert json.loads((run / "config.json").read_text())["method_args"] == {"memory_size": 64, "k": 4}
    bad = subprocess.run(cmd[:4] + ["--dataset", "mnist", "--data-root", cifar_root, "--device", "cpu",
                                    "--run-dir", str(tmp_path / "bad")], capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "mnist" in bad.stderr
    missing = subprocess.run([sys.executable, "-m", "osessl_core", "eval", "--run-dir", str(tmp_path / "none"),
                              "--device", "cpu"], capture_output=True, text=True)
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1 and "checkpoint.pt" in missing.stderr


CLI_METHOD_ARGS = {"osessl": ["memory_size=64"], "sop": ["memory_size=64"], "msf": ["memory_size=64"],
                   "cmsf": ["memory_size=64", "constraint=semi"], "dsa": ["eta=10"]}
CLI_METHOD_ARGS["swav"] = ["queue_size=64", "queue_start_epoch=0"]  # the queue comes in at the resumed step 2


@pytest.mark.parametrize("method", sorted(METHODS))
def test_cli_trains_every_method_resumes_and_evaluates(tmp_path, cifar_root, method, capsys):
    """Through the CLI's main() in this process (the `python -m osessl_core` entry point itself is run as a
    subprocess by test_cli_train_writes_a_complete_run_directory and tests/test_reliability.py)."""
    from osessl_core.cli import main
    run = tmp_path / "cli"
    cmd = ["train", "--method", method, "--data-root", cifar_root,
           "--subset", "128", "--batch-size", "32", "--epochs", "1", "--width", "8", "--proj-hidden", "64",
           "--proj-out", "32", "--device", "cpu", "--run-dir", str(run), "--no-progress", "--log-every", "1",
           "--eval-test-subset", "100"]
    for arg in CLI_METHOD_ARGS.get(method, []):
        cmd += ["-m", arg]
    assert main(cmd + ["--max-steps", "2"]) == 0, capsys.readouterr().err
    assert (run / "checkpoint.pt").exists() and not (run / "eval.json").exists()
    assert main(cmd) == 0, capsys.readouterr().err  # resumes and finishes the epoch
    assert [json.loads(l)["step"] for l in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3, 4]
    ev = json.loads((run / "eval.json").read_text())   # the shared k-NN evaluation
    assert 0 <= ev["knn_top1"] <= 100 and ev["n_test"] == 100
    # The `eval` command re-evaluates the checkpoint with the shared k-NN and linear-probe code.
    assert main(["eval", "--run-dir", str(run), "--device", "cpu", "--linear", "--linear-epochs", "2"]) == 0, \
        capsys.readouterr().err
    ev = json.loads((run / "eval.json").read_text())
    assert ev["step"] == 4 and ev["epochs"] == 1 and ev["linear_epochs"] == 2 and ev["n_test"] == 100
    assert 0 <= ev["knn_top1"] <= 100 and 0 <= ev["linear_top1"] <= ev["linear_top5"] <= 100
