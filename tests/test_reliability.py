"""Nothing lost, nothing poisoned: NaN roll-back, the run-dir lock, stop signals, stale temp files, a kill in the
middle of a checkpoint write (bit-exact resume), partial metrics lines, file modes and 16-bit PNGs."""
import io
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch
from PIL import Image

from osessl_core.engine import NonFiniteLossError, RunDirLockedError, Trainer, TrainingInterrupted, train
from osessl_core.engine import trainer as trainer_module
from osessl_core.files import atomic_write_json

from test_train import tiny

pytestmark = pytest.mark.slow
CLI = [sys.executable, "-m", "osessl_core", "train"]


def cli_args(root, run_dir, *extra):
    return ["--method", "resa", "--data-root", root, "--subset", "64", "--batch-size", "16", "--epochs", "2",
            "--width", "8", "--proj-hidden", "32", "--proj-out", "16", "--warmup-epochs", "0", "--device", "cpu",
            "--run-dir", str(run_dir), "--no-progress", "--log-every", "1", "--no-eval-knn", *extra]


def one_line_error(proc, code):
    assert proc.returncode == code, (proc.returncode, proc.stderr[-2000:])
    lines = [l for l in proc.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    return lines[0]


def finite_state(trainer):
    return all(torch.isfinite(v).all() for v in trainer.method.state_dict().values() if v.is_floating_point())


def test_non_finite_loss_rolls_back_to_finite_weights_and_resume_recovers(tmp_path, cifar_root, monkeypatch):
    """The lr explodes at the 4th update: the checkpoint written after it (or its successor) is discarded, the
    confirmed one from step 2 stays, and resuming with a sane lr continues from finite weights."""
    real = trainer_module.lr_at
    monkeypatch.setattr(trainer_module, "lr_at", lambda step, *a: 1e30 if step == 3 else real(step, *a))
    cfg = tiny(tmp_path, "resa", data_root=cifar_root, subset=64, batch_size=16, ckpt_every=2, max_steps=8)
    with pytest.raises(NonFiniteLossError, match="the checkpoint at step 2 has finite weights"):
        train(cfg)
    assert torch.load(tmp_path / "resa" / "checkpoint.pt", weights_only=True)["step"] == 2
    assert not (tmp_path / "resa" / "checkpoint.prev.pt").exists()
    monkeypatch.setattr(trainer_module, "lr_at", real)
    resumed = Trainer(cfg)
    assert resumed.step == 2 and finite_state(resumed)
    result = resumed.fit()
    assert result.step == 8 and finite_state(resumed)
    assert [r["step"] for r in trainer_module.read_metrics(result.run_dir)] == list(range(1, 9))


def test_cli_nan_abort_is_one_line_and_the_advice_works(tmp_path, cifar_root):
    run = tmp_path / "nan"
    proc = subprocess.run(CLI + cli_args(cifar_root, run, "--base-lr", "1e30", "--max-steps", "6"),
                          capture_output=True, text=True, timeout=300)
    line = one_line_error(proc, 1)
    assert "NonFiniteLossError" in line and "--allow-config-change" in line, line
    proc = subprocess.run(CLI + cli_args(cifar_root, run, "--base-lr", "0.03", "--allow-config-change",
                                         "--max-steps", "6"), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    assert state["step"] == 6 and all(torch.isfinite(v).all() for v in state["model"].values()
                                      if v.is_floating_point())


def test_second_writer_is_refused_and_a_stale_lock_does_not_block(tmp_path, cifar_root):
    run = tmp_path / "locked"
    run.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        from osessl_core.engine import run_lock
        run_lock.acquire({str(run)!r}); print("held", flush=True); time.sleep(120)""")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunDirLockedError, match=f"pid {holder.pid} on host"):
            Trainer(tiny(tmp_path, "resa", data_root=cifar_root, run_dir=str(run), max_steps=1))
        assert not (run / "config.json").exists()  # refused before anything was written
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    trainer = Trainer(tiny(tmp_path, "resa", data_root=cifar_root, run_dir=str(run), max_steps=1))  # stale lock
    trainer.fit()
    trainer.close()


def test_sigterm_checkpoints_at_the_next_step_and_resume_finishes(tmp_path, cifar_root):
    run = tmp_path / "term"
    proc = subprocess.Popen(CLI + cli_args(cifar_root, run), stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while not (run / "metrics.jsonl").exists() or not (run / "metrics.jsonl").read_text().strip():
        assert time.time() < deadline and proc.poll() is None, "training did not start"
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "stopped by SIGTERM" in err and "Traceback" not in err, err
    step = torch.load(run / "checkpoint.pt", weights_only=True)["step"]
    assert 1 <= step < 8 and trainer_module.read_metrics(run)[-1]["step"] == step
    done = subprocess.run(CLI + ["--run-dir", str(run)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert [r["step"] for r in trainer_module.read_metrics(run)] == list(range(1, 9))


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGUSR1])
def test_signal_in_process_stops_at_a_step_boundary_with_a_checkpoint(tmp_path, cifar_root, sig):
    trainer = Trainer(tiny(tmp_path, "resa", data_root=cifar_root, subset=64, batch_size=16, max_steps=6))
    real = trainer.train_step

    def step_then_signal(batch):
        out = real(batch)
        if trainer.step == 2:
            os.kill(os.getpid(), sig)
        return out

    trainer.train_step = step_then_signal
    with pytest.raises(TrainingInterrupted, match=f"stopped by {sig.name} at step 2"):
        trainer.fit()
    trainer.close()
    assert signal.getsignal(sig) is not None and torch.load(trainer.checkpoint_path, weights_only=True)["step"] == 2


KILL_IN_WRITE = """
import os, signal, sys, torch
import osessl_core.engine.checkpoint as ck
real_save, calls = torch.save, []
def half_then_kill(obj, f):
    calls.append(1)
    if len(calls) == 2:  # the second checkpoint: write part of it, then die as kill -9 would
        buf = __import__("io").BytesIO(); real_save(obj, buf); f.write(buf.getvalue()[: len(buf.getvalue()) // 2])
        f.flush(); os.kill(os.getpid(), signal.SIGKILL)
    real_save(obj, f)
ck.torch.save = half_then_kill
from osessl_core.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_kill_during_checkpoint_write_resumes_bit_exact(tmp_path, cifar_root):
    args = cli_args(cifar_root, tmp_path / "killed", "--ckpt-every", "2", "--max-steps", "6", "--method", "osessl",
                    "-m", "memory_size=32", "-m", "k=2")
    proc = subprocess.run([sys.executable, "-c", KILL_IN_WRITE, "train", *args], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    run = tmp_path / "killed"
    assert list(run.glob(".checkpoint.pt.*.tmp")), "the kill should have left a partial temp file"
    assert torch.load(run / "checkpoint.pt", weights_only=True)["step"] == 2  # the last complete checkpoint
    cfg = dict(data_root=cifar_root, subset=64, batch_size=16, width=8, proj_hidden=32, proj_out=16, ckpt_every=2,
               max_steps=6, method_args={"memory_size": 32, "k": 2}, eval_knn=False)
    resumed = Trainer(tiny(tmp_path, "osessl", run_dir=str(run), **cfg))
    assert resumed.step == 2 and not list(run.glob(".*.tmp"))  # stale temp file removed at start
    a = resumed.fit().method.state_dict()
    b = Trainer(tiny(tmp_path, "osessl", run_dir=str(tmp_path / "straight"), **cfg)).fit().method.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [r["step"] for r in trainer_module.read_metrics(run)] == list(range(1, 7))


def test_partial_metrics_line_is_dropped_on_resume(tmp_path, cifar_root):
    cfg = tiny(tmp_path, "resa", data_root=cifar_root, subset=64, batch_size=16, max_steps=2)
    Trainer(cfg).fit()
    with open(tmp_path / "resa" / "metrics.jsonl", "a") as f:
        f.write('{"step": 3, "loss": 1.')  # a crash in the middle of a write
    result = Trainer(tiny(tmp_path, "resa", data_root=cifar_root, subset=64, batch_size=16, max_steps=4)).fit()
    assert [r["step"] for r in trainer_module.read_metrics(result.run_dir)] == [1, 2, 3, 4]


def test_written_files_respect_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_json(tmp_path / "a.json", {"x": 1})
        os.umask(0o077)
        atomic_write_json(tmp_path / "b.json", {"x": 1})
    finally:
        os.umask(old)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "b.json").stat().st_mode & 0o777 == 0o600


def test_sixteen_bit_png_is_scaled_not_clipped():
    from osessl_core.data.datasets import _decode_image
    grey = (np.arange(32 * 32).reshape(32, 32) * 64).astype(np.uint16)  # 0 .. 65472
    buf = io.BytesIO()
    Image.fromarray(grey).save(buf, format="PNG")
    img = _decode_image(buf.getvalue(), "grey16.png", None)
    expected = torch.from_numpy((grey.astype(np.int64) * 255 + 32767) // 65535).to(torch.uint8)
    assert img.dtype == torch.uint8 and img.shape == (3, 32, 32)
    assert torch.equal(img[0], expected) and torch.equal(img[1], expected) and (img == 255).float().mean() < 0.01
