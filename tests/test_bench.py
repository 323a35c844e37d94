import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


def test_cpu_bench_reports_every_method_and_mode(tmp_path, cifar_root):
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, "-m", "osessl_core", "bench", "--device", "cpu", "--data-root", cifar_root,
                           "--out", str(out), "--steps", "2", "--warmup", "1"], capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads(out.read_text())
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
