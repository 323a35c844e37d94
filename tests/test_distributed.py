"""Data parallelism on CPU with gloo: 2 ranks x batch B/2 must match 1 rank x batch B step for step.

The comparison runs in float64: this narrow, small-batch test network is ill-conditioned enough that even plain
fp32 BN gradients of early layers are ~1e-3 away from float64, which would hide or fake a mismatch.
"""
import json
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from osessl_core.config import TrainConfig
from osessl_core.distributed import gather_with_grad, shard_bounds
from osessl_core.engine import Trainer
from osessl_core.methods import METHODS

pytestmark = pytest.mark.slow
GLOBAL_BATCH, STEPS = 16, 3
METHOD_ARGS = {"osessl": {"memory_size": 40, "k": 4}, "sop": {"memory_size": 40, "anchors": 8, "k": 4},
               "msf": {"memory_size": 40}, "dsa": {"eta": 4}}
METHOD_ARGS["swav"] = {"queue_size": 32, "queue_start_epoch": 0, "freeze_prototypes_epochs": 0}  # queue at step 2
METHOD_ARGS["dino"] = {"freeze_last_layer": 0}  # the last layer's gradient too
METHOD_ARGS["wmse"] = {"w_size": 8}  # two sub-batches of the global 16, each mixing both ranks' rows
# Every registered method for 3 steps; CMSF for 6 (4 steps per epoch): self reads the previous-epoch pool in
# epoch 2, semi retrains its pseudo-label head at steps 2 and 4 and constrains by the gathered labels.
# CMSF-self's memory holds one global batch here: a larger one holds some images twice across the epoch boundary,
# and both entries have the same previous-epoch embedding, an exact tie in C_i that rounding breaks differently
# for 1 and 2 ranks (different matmul shapes): an equally near, different neighbour, not a mismatch.
# SOP-MIM also runs on a ViT: per-rank block masks, patch positions and the patch memory.
CASES = [(m, METHOD_ARGS.get(m, {}), STEPS, "resnet18") for m in sorted(METHODS) if m != "cmsf"] + [
    ("cmsf", {"memory_size": GLOBAL_BATCH}, 6, "resnet18"),
    ("cmsf", {"memory_size": 40, "constraint": "semi", "label_fraction": 0.5}, 6, "resnet18"),
    ("sop", {**METHOD_ARGS["sop"], "patch_memory_size": 40, "vit_depth": 1}, STEPS, "vit_tiny")]
CASE_IDS = [m + (f"-{a['constraint']}" if "constraint" in a else "") + ("" if arch == "resnet18" else f"-{arch}")
            for m, a, _, arch in CASES]


def config(root, run_dir, world, method, method_args, steps, arch):
    return TrainConfig(method=method, arch=arch, dataset="cifar10", data_root=root, subset=64,
                       batch_size=GLOBAL_BATCH // world, epochs=4, width=8, proj_hidden=32, proj_out=16,
                       warmup_epochs=0, base_lr=1.0, device="cpu", run_dir=run_dir, progress=False, eval_knn=False,
                       log_every=1, max_steps=steps, method_args=method_args)


def assert_close(a, b, name):
    """Norm-relative check with a tiny absolute floor: elementwise tolerances are meaningless for entries near
    zero, and some gradients are exactly zero in theory (Linear biases followed by BN: norms ~1e-17)."""
    diff = float((a.double() - b.double()).norm())
    assert diff <= 1e-8 * float(a.double().norm()) + 1e-12, (name, diff, float(a.norm()))


def snapshot(trainer, result):
    method = trainer.method
    return {"losses": [{k: v for k, v in row.items() if k not in ("seconds", "images_per_s")}
                       for row in result.metrics],
            "grads": {n: p.grad.clone() for n, p in method.named_parameters() if p.grad is not None},
            "state": {k: v.clone() for k, v in method.state_dict().items()}}


def shutdown():
    # No rank may tear down its gloo group while a peer is still in a collective: that aborts the process.
    dist.barrier()
    dist.destroy_process_group()


def _worker(rank, world, init_file, root, run_dir, case, out):
    torch.set_num_threads(1)
    torch.set_default_dtype(torch.float64)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        trainer = Trainer(config(root, run_dir, world, *case))
        result = trainer.fit()
        if rank == 0:
            torch.save(snapshot(trainer, result), out)
    finally:
        shutdown()


@pytest.mark.parametrize("method,method_args,steps,arch", CASES, ids=CASE_IDS)
def test_two_ranks_match_one_rank(tmp_path, cifar_root, method, method_args, steps, arch):
    torch.set_default_dtype(torch.float64)
    case = (method, method_args, steps, arch)
    try:
        one = Trainer(config(cifar_root, str(tmp_path / "one"), 1, *case))
        ref = snapshot(one, one.fit())
    finally:
        torch.set_default_dtype(torch.float32)
    mp.spawn(_worker, nprocs=2, join=True, args=(2, str(tmp_path / "rdv"), cifar_root, str(tmp_path / "two"), case,
                                                 str(tmp_path / "two.pt")))
    two = torch.load(tmp_path / "two.pt")
    assert len(ref["losses"]) == len(two["losses"]) == steps
    for a, b in zip(ref["losses"], two["losses"]):
        assert a.keys() == b.keys()
        for k in a:
            assert a[k] == pytest.approx(b[k], rel=1e-9, abs=1e-12), (k, a[k], b[k])
    assert ref["grads"].keys() == two["grads"].keys() and ref["grads"]
    for name, g in ref["grads"].items():   # the last step's (DDP-averaged) gradients
        assert_close(g, two["grads"][name], name)
    assert ref["state"].keys() == two["state"].keys()
    for name, v in ref["state"].items():   # weights, momentum nets, BN running stats, memories and pointers
        assert v.dtype == two["state"][name].dtype, name
        assert_close(v, two["state"][name], name)
    if method in ("osessl", "sop", "msf", "cmsf"):
        # >= 3 steps x 16 gathered rows, wrapped at memory_size (SOP: random init)
        assert int(two["state"]["memory.filled"]) == method_args["memory_size"]
    if method == "cmsf" and "constraint" not in method_args:  # self: the constrained term differs in epoch 2
        assert all(r["cmsf"] == r["msf"] for r in ref["losses"][:4])
        assert all(r["cmsf"] != r["msf"] for r in ref["losses"][4:])
    if arch != "resnet18":
        assert {"patch_memory.bank", "encoder.mask_token"} <= ref["state"].keys()
        assert "encoder.mask_token" in ref["grads"]
    if method_args.get("constraint") == "semi":
        assert two["state"]["head.1.running_mean"].abs().sum() > 0 and (two["state"]["memory.labels"] >= 0).any()


def _gather_worker(rank, world, init_file, out):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        lo, hi = shard_bounds(5)
        x = torch.arange(lo, hi, dtype=torch.float64).repeat(2, 1).T.contiguous().requires_grad_()
        y = gather_with_grad(x)                       # uneven shards: 3 + 2 rows
        (y * torch.arange(1.0, 6.0, dtype=torch.float64).view(5, 1)).sum().backward()
        torch.save({"y": y.detach(), "grad": x.grad}, f"{out}.{rank}")
    finally:
        shutdown()


def test_gather_with_grad_uneven_shards(tmp_path):
    assert [shard_bounds(5, r, 2) for r in range(2)] == [(0, 3), (3, 5)]
    mp.spawn(_gather_worker, nprocs=2, join=True, args=(2, str(tmp_path / "rdv"), str(tmp_path / "g")))
    r0, r1 = torch.load(f"{tmp_path}/g.0"), torch.load(f"{tmp_path}/g.1")
    assert torch.equal(r0["y"][:, 0], torch.arange(5.0, dtype=torch.float64)) and torch.equal(r0["y"], r1["y"])
    # d/dx of sum_i w_i y_i is w_i, summed over the two ranks that both used every row
    assert torch.equal(r0["grad"][:, 0], 2 * torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64))
    assert torch.equal(r1["grad"][:, 0], 2 * torch.tensor([4.0, 5.0], dtype=torch.float64))


def test_torchrun_cli_smoke_and_resume_on_one_rank(tmp_path, cifar_root):
    run = tmp_path / "run"
    common = ["--method", "osessl", "--data-root", cifar_root, "--subset", "128", "--epochs", "2", "--width", "8",
              "--proj-hidden", "32", "--proj-out", "16", "--device", "cpu", "--run-dir", str(run), "--no-progress",
              "--eval-test-subset", "100", "-m", "memory_size=64", "--log-every", "1"]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          "-m", "osessl_core", "train", "--batch-size", "16", "--max-steps", "3", *common],
                         capture_output=True, text=True, timeout=600)
    assert two.returncode == 0, two.stderr[-3000:]
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    assert state["world_size"] == 2 and state["global_batch"] == 32 and state["step"] == 3
    # Same global batch on one process: the run resumes where the two ranks stopped and completes.
    one = subprocess.run([sys.executable, "-m", "osessl_core", "train", "--batch-size", "32", *common],
                         capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stderr[-3000:]
    steps = [json.loads(l)["step"] for l in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 9)) and (run / "eval.json").exists()
    # A different global batch is refused with a one-line reason.
    bad = subprocess.run([sys.executable, "-m", "osessl_core", "train", "--batch-size", "8", *common],
                         capture_output=True, text=True, timeout=600)
    assert bad.returncode == 2 and "global_batch" in bad.stderr
