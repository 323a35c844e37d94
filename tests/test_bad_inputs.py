"""Every bad input a user is likely to hit, through the CLI's `main()`: a non-zero exit (2 for usage errors, as
argparse uses), exactly one line on stderr naming the flag, field or file, no traceback, and an existing run dir
left byte-for-byte as it was. (In process: the same code path as `python -m osessl_core`, without paying a
Python start-up per case; the subprocess paths are covered in test_train.py and test_reliability.py.)"""
import errno
import hashlib
import json
from pathlib import Path

import pytest

from osessl_core.cli import main

pytestmark = pytest.mark.slow


def base(root, run_dir, *extra):
    return ["train", "--method", "resa", "--data-root", root, "--subset", "64", "--batch-size", "16", "--epochs", "1",
            "--warmup-epochs", "0", "--width", "8", "--proj-hidden", "32", "--proj-out", "16", "--device", "cpu", "--run-dir", str(run_dir),
            "--no-progress", "--log-every", "1", "--eval-test-subset", "50", *extra]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, cifar_root):
    """A finished 4-step run dir whose files must survive every refused command unchanged."""
    run = tmp_path_factory.mktemp("bad") / "run"
    assert main(base(cifar_root, run)) == 0
    return run


def snapshot(run: Path) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(run.iterdir()) if p.is_file()
            and p.name != ".lock"}


# (id, extra args or a callable(root, trained_dir, tmp_path) -> argv, expected exit code, text the line must hold)
FLAG_CASES = [
    ("batch-size-0", ["--batch-size", "0"], "batch_size must be >= 1"),
    ("log-every-0", ["--log-every", "0"], "log_every must be >= 1"),
    ("epochs-0", ["--epochs", "0"], "epochs must be >= 1"),
    ("subset-0", ["--subset", "0"], "subset must be >= 1"),
    ("subset-negative", ["--subset", "-5"], "subset must be >= 1"),
    ("subset-too-large", ["--subset", "60000"], "subset=60000 is larger than the dataset"),
    ("eval-test-subset-negative", ["--eval-test-subset", "-5"], "eval_test_subset must be >= 1"),
    ("eval-test-subset-too-large", ["--eval-test-subset", "20000"], "eval_test_subset=20000 is larger"),
    ("final-lr-ratio-negative", ["--final-lr-ratio", "-1"], "final_lr_ratio must be in [0, 1]"),
    ("momentum-base-2", ["--momentum-base", "2.0"], "momentum_base must be in [0, 1]"),
    ("max-steps-0", ["--max-steps", "0"], "max_steps must be >= 1"),
    ("time-limit-negative", ["--time-limit", "-5"], "time_limit must be > 0"),
    ("base-lr-0", ["--base-lr", "0"], "base_lr must be > 0"),
    ("warmup-negative", ["--warmup-epochs", "-1"], "warmup_epochs must be finite and >= 0"),
    ("bool-param-typo", ["--method", "osessl", "-m", "use_mix_ins=maybe"], "use_mix_ins: expected bool"),
    ("int-param-float", ["--method", "osessl", "-m", "k=8.5"], "parameter k: expected int, got 8.5"),
    ("k-above-memory", ["--method", "osessl", "-m", "memory_size=64", "-m", "k=100"], "k must be <= memory_size"),
    ("unknown-param", ["--method", "osessl", "-m", "tau_z=0.1"], "unknown parameter(s) for method 'osessl'"),
    ("param-without-value", ["-m", "temperature"], "-m expects NAME=VALUE"),
    ("unknown-method", ["--method", "simclr2"], "unknown method 'simclr2'"),
    ("unknown-dataset", ["--dataset", "mnist"], "mnist"),
    ("missing-data-root", ["--data-root", "/nonexistent/data"], "/nonexistent/data"),
    ("cuda-without-gpu", ["--device", "cuda"], "CUDA is not available"),
]


@pytest.mark.parametrize("case,extra,text", FLAG_CASES, ids=[c[0] for c in FLAG_CASES])
def test_bad_flag_is_one_line_exit_2(tmp_path, cifar_root, capsys, case, extra, text):
    if case == "cuda-without-gpu":
        import torch
        if torch.cuda.is_available():
            pytest.skip("needs a machine without CUDA")
    run = tmp_path / "run"
    code = main(base(cifar_root, run, *extra))
    err = capsys.readouterr().err
    lines = [l for l in err.splitlines() if l.strip()]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, (code, err)
    assert text in lines[0], lines[0]
    assert not (run / "checkpoint.pt").exists() and not (run / "metrics.jsonl").exists()


def _config_file(tmp_path, content):
    path = tmp_path / "cfg.json"
    path.write_text(content)
    return ["--config", str(path)]


RUN_DIR_CASES = [  # against the finished run dir: nothing in it may change
    ("changed-lr", lambda t, tmp: ["--base-lr", "3.0"], 2, "changed training field(s): base_lr"),
    ("changed-epochs", lambda t, tmp: ["--epochs", "3"], 2, "epochs: checkpoint=1 now=3"),
    ("changed-width", lambda t, tmp: ["--width", "16"], 2, "width: checkpoint=8 now=16"),
    ("config-wrong-type", lambda t, tmp: _config_file(tmp, '{"base_lr": "fast"}'), 2, "base_lr: expected float"),
    ("config-bad-json", lambda t, tmp: _config_file(tmp, '{"epochs": '), 2, "cannot read --config file"),
    ("config-missing", lambda t, tmp: ["--config", str(tmp / "none.json")], 2, "cannot read --config file"),
    ("config-unknown-field", lambda t, tmp: _config_file(tmp, '{"epoch": 3}'), 2, "unknown config field(s) ['epoch']"),
]


@pytest.mark.parametrize("case,extra,code,text", RUN_DIR_CASES, ids=[c[0] for c in RUN_DIR_CASES])
def test_refused_resume_leaves_the_run_dir_untouched(tmp_path, cifar_root, trained, capsys, case, extra, code, text):
    before = snapshot(trained)
    capsys.readouterr()
    got = main(base(cifar_root, trained, *extra(trained, tmp_path)))
    err = capsys.readouterr().err
    lines = [l for l in err.splitlines() if l.strip()]
    assert got == code and len(lines) == 1 and "Traceback" not in err, (got, err)
    assert text in lines[0], lines[0]
    assert snapshot(trained) == before


def test_bad_run_dirs_are_one_line(tmp_path, cifar_root, capsys):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    for run_dir, text in [(a_file, "cannot use run dir"), (Path("/proc/osessl-run"), "cannot use run dir")]:
        assert main(base(cifar_root, run_dir)) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and text in err[0] and str(run_dir) in err[0], err
    assert main(["eval", "--run-dir", str(tmp_path / "none"), "--device", "cpu"]) == 2
    assert "checkpoint.pt" in capsys.readouterr().err


def test_corrupt_checkpoint_is_one_line_and_kept(tmp_path, cifar_root, trained, capsys):
    import shutil
    run = tmp_path / "corrupt"
    shutil.copytree(trained, run)
    (run / "checkpoint.pt").write_bytes(b"not a checkpoint")
    assert main(base(cifar_root, run)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot read checkpoint" in err[0]
    assert (run / "checkpoint.pt").read_bytes() == b"not a checkpoint"


def test_disk_full_names_the_path(tmp_path, cifar_root, monkeypatch, capsys):
    import osessl_core.files as files

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(files.os, "fsync", full)
    code = main(base(cifar_root, tmp_path / "full"))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and "no space left on device while writing" in err[0], err
    assert str(tmp_path / "full") in err[0] and not list((tmp_path / "full").glob(".*.tmp"))


def test_allow_config_change_records_the_change(tmp_path, cifar_root, trained, capsys):
    import shutil
    run = tmp_path / "extended"
    shutil.copytree(trained, run)
    assert main(base(cifar_root, run, "--epochs", "2", "--allow-config-change")) == 0
    change = json.loads((run / "config_changes.jsonl").read_text().splitlines()[-1])
    assert change["step"] == 4 and change["changes"]["epochs"] == {"old": 1, "new": 2}
    assert json.loads((run / "config.json").read_text())["epochs"] == 2
    assert json.loads((run / "eval.json").read_text())["step"] == 8
