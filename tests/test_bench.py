import json
import subprocess
import sys

import pytest

from osessl_core.methods import METHODS

pytestmark = pytest.mark.slow


def bench(tmp_path, cifar_root, *args):
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, "-m", "osessl_core", "bench", "--device", "cpu", "--data-root", cifar_root,
                           "--out", str(out), "--steps", "2", "--warmup", "1", *args], capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(out.read_text())


def test_cpu_bench_reports_every_mode_and_ratio(tmp_path, cifar_root):
    res = bench(tmp_path, cifar_root, "--methods", "resa,osessl")
    modes = {(r["method"], r["mode"]) for r in res["rows"]}
    assert modes == {(m, k) for m in ("resa", "osessl") for k in ("eager_fp32", "eager_bf16", "fast")}
    for r in res["rows"]:
        assert r["ms_per_step"] > 0 and r["images_per_s"] > 0 and r["epoch_seconds"] > 0
        b = r["breakdown_ms"]
        assert {"data_augment", "forward_loss", "backward", "optimizer"} <= set(b)
        if r["mode"] == "eager_fp32":
            assert b["network_forward"] > 0 and "loss" in b
    assert {"resa_fast_speedup_vs_eager_fp32", "osessl_fast_speedup_vs_eager_fp32",
            "osessl_vs_resa_step_time"} <= set(res["ratios"])
    assert res["provenance"]["git_sha"] and res["batch_size"] == 32


def test_cpu_bench_runs_every_registered_method(tmp_path, cifar_root):
    # bf16 autocast on a CPU without bf16 units is very slow, so this one times the two fp32 modes only.
    res = bench(tmp_path, cifar_root, "--modes", "eager_fp32,fast")
    assert {(r["method"], r["mode"]) for r in res["rows"]} == {(m, k) for m in METHODS for k in ("eager_fp32", "fast")}
    for r in res["rows"]:
        measured = r["epoch_seconds_measured"]
        assert measured > 0 if r["mode"] == "fast" else measured is None
        assert r["ms_per_step"] > 0
    assert set(res["ratios"]) >= {f"{m}_fast_speedup_vs_eager_fp32" for m in METHODS}


def test_cpu_bench_rejects_unknown_names(tmp_path, cifar_root):
    for flag, value in (("--modes", "turbo"), ("--methods", "nope")):
        proc = subprocess.run([sys.executable, "-m", "osessl_core", "bench", "--device", "cpu", "--data-root", cifar_root,
                               flag, value, "--out", str(tmp_path / "x.json")], capture_output=True, text=True)
        assert proc.returncode != 0 and value in proc.stderr
