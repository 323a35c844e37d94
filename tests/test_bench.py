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


def _measured(node, found):
    """Every (key, value) under `node` whose key names a measurement (bench.MEASURED)."""
    from osessl_core.engine.bench import MEASURED
    if isinstance(node, dict):
        for k, v in node.items():
            if k in MEASURED:
                found.append((k, v))
            _measured(v, found)
    elif isinstance(node, list):
        for v in node:
            _measured(v, found)
    return found


def test_tiny_imagenet_bench_reports_loader_resident_and_full_loop(tmp_path):
    import math

    import torch

    from osessl_core.engine.bench import TINY_IMAGENET_BENCH, run_imagenet_bench, tiny_imagenet_config
    out = tmp_path / "imagenet.json"
    threads = torch.get_num_threads()
    # One intra-op thread: on shared cores, OpenMP threads beside the loader's workers spin against each other
    # (a 0.4 s step took 10 s); this test checks the report, not the speed.
    torch.set_num_threads(1)
    try:
        res = run_imagenet_bench(tiny_imagenet_config(), out=out, progress=False, **TINY_IMAGENET_BENCH)
    finally:
        torch.set_num_threads(threads)
    assert json.loads(out.read_text()) == json.loads(json.dumps(res))  # the file holds the last row too
    methods = ("resa", "osessl")
    assert [(r["method"], r["arch"]) for r in res["rows"]] == [(m, "resnet18") for m in methods]
    for r in res["rows"]:
        assert set(r["full"]) == {"cpu"} and set(r["loader_images_per_s"]) == {"cpu"}
        assert r["compile"] is False and r["cuda_graphs"] is False and r["peak_gpu_memory_gib"] is None
        assert r["full"]["cpu"]["full_vs_resident"] == pytest.approx(
            r["full"]["cpu"]["images_per_s"] / r["resident"]["images_per_s"])
    assert {(l["method"], l["backend"], l["workers"]) for l in res["loader"]} == {
        (m, "cpu", w) for m in methods for w in (0, 2)}
    assert set(res["ratios"]) == {f"{m}_resnet18_full_vs_resident_cpu" for m in methods}
    machine = res["loader_on_this_machine"]
    assert machine["cores"] >= 1 and set(machine["best"]) == set(methods)
    assert res["target"]["met"] is None and not res["target"]["this_run_is_that_setting"]
    assert res["data"]["generated"] and res["data"]["n_train"] == 24 and res["train_loader_workers"] == 2
    assert res["provenance"]["git_sha"] and res["measured_on"].startswith("cpu")
    numbers = _measured(res, []) + [(k, v) for k, v in res["ratios"].items()]
    numbers += [("best", b["images_per_s"]) for b in machine["best"].values()]
    assert len(numbers) > 20
    for key, value in numbers:
        if key == "peak_gpu_memory_gib" and value is None:
            continue  # no GPU
        assert isinstance(value, float) and math.isfinite(value) and value > 0, (key, value)


def test_generate_folder_writes_parts_in_parallel_and_merges_them(tmp_path):
    from osessl_core.engine.bench import generate_folder
    root = generate_folder(tmp_path / "f", 401, 3, ((64, 48), (48, 64)), processes=2)
    files = sorted((root / "train").glob("*/*.JPEG"))
    assert len(files) == 402 and len({f.parent.name for f in files}) == 3  # 134 per class, 67 from each part
    assert [p.name for p in root.iterdir()] == ["train"]  # the parts were merged away
    a, b = (root / "train" / "n00000000" / f"n00000000_0_p{j}.JPEG" for j in (0, 1))
    assert a.read_bytes() != b.read_bytes()  # each part has its own seed


def test_cli_bench_imagenet_passes_its_flags(monkeypatch, tmp_path):
    """`bench --imagenet` wiring: the tiny CPU configuration, the flags as run_imagenet_bench's arguments."""
    import torch

    from osessl_core import cli
    from osessl_core.engine import bench
    seen = {}

    def fake(cfg, **kw):
        seen.update(kw, cfg=cfg)
        return {"ratios": {}}

    monkeypatch.setattr(bench, "run_imagenet_bench", fake)
    threads = torch.get_num_threads()
    code = cli.main(["bench", "--imagenet", "--device", "cpu", "--workers", "3,1", "--arch", "resnet18",
                     "--image-size", "48", "--out", str(tmp_path / "x.json")])
    assert code == 0 and seen["workers"] == (3, 1) and seen["archs"] == ("resnet18",)
    assert seen["cfg"].image_size == 48 and seen["cfg"].stream and seen.get("data_root") is None
    assert torch.get_num_threads() == threads  # the caller's process is left as it was
