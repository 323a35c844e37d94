"""The README's main job: ReSA vs OSESSL on CIFAR-10 with one seed and one budget, k-NN, and a t-SNE/UMAP figure.

On a GPU it runs the real recipe (ResNet-18, batch 256, 50 epochs by default). Without one it scales itself down
(narrow ResNet-18, a 4k-image subset, 3 epochs) so that it finishes in about 4 minutes on an idle 2-core CPU; the budget
used is written into the summary, so a CPU number is never mistaken for a GPU one.
"""
from __future__ import annotations

import time
from pathlib import Path

import torch

from .config import TrainConfig
from .engine import train
from .files import atomic_write_json
from .engine.evaluate import eval_normalization
from .paths import default_data_root
from .provenance import provenance

GPU_BUDGET = dict(epochs=50, batch_size=256, width=64, subset=None, eval_test_subset=None, embed_points=5000)
CPU_BUDGET = dict(epochs=3, batch_size=128, width=16, subset=4000, eval_test_subset=2000, embed_points=1500,
                  proj_hidden=512, proj_out=128, warmup_epochs=1.0)


# Measured with `python -m osessl_core quickstart --device cpu` on an idle 2-core CPU at 2026-12-02: 3 min 35 s
# (plus 12 s to decode the CIFAR archive on a first run); a busy machine takes longer.
CPU_EXPECTED = "It takes about 4 minutes on an idle 2-core CPU (longer on a busy one)."


def budget_for(device: str, budget: dict | None = None) -> tuple[torch.device, dict]:
    """The device and a copy of the budget to run with: `budget` if given, else the GPU or CPU one."""
    from .engine.trainer import resolve_device
    dev = resolve_device(device)
    if budget is None:
        budget = GPU_BUDGET if dev.type == "cuda" else CPU_BUDGET
    return dev, dict(budget)


def run_quickstart(out_dir="results/quickstart", data_root=None, device="auto", epochs=None, methods=("resa", "osessl"),
                   progress=True, budget: dict | None = None) -> dict:
    """Train `methods`, evaluate them and draw their embeddings. `budget` (the keys of CPU_BUDGET) replaces the
    device's default budget, e.g. the notebooks' smoke budget; `epochs` overrides its epochs."""
    from .eval import embed_2d, extract_features, plot_embeddings
    t_start = time.perf_counter()
    out = Path(out_dir)
    dev, budget = budget_for(device, budget)
    if epochs is not None:
        budget["epochs"] = epochs
    embed_points = budget.pop("embed_points")
    data_root = str(data_root or default_data_root())
    summary = {"budget": budget, "device": str(dev), "methods": {}}
    if dev.type != "cuda" and budget == {k: v for k, v in CPU_BUDGET.items() if k != "embed_points"}:
        print(f"No CUDA GPU: the scaled-down CPU budget ({budget['epochs']} epochs of {budget['subset']} images, "
              f"ResNet-18 at width {budget['width']}, for {', '.join(methods)}). {CPU_EXPECTED}", flush=True)
    panels, results = {}, {}
    for name in methods:
        # A smaller bank on the CPU subset keeps it at the paper's ~8% of the training set (4096 / 50000).
        method_args = {"memory_size": 384} if name == "osessl" and budget.get("subset") else {}
        cfg = TrainConfig(method=name, dataset="cifar10", data_root=data_root, device=device, seed=0,
                          run_dir=str(out / "runs" / name), progress=progress, method_args=method_args, **budget)
        t0 = time.perf_counter()
        res = train(cfg)
        results[name] = res
        summary["methods"][name] = {"knn_top1": res.eval["knn_top1"] if res.eval else None,
                                    "train_seconds": time.perf_counter() - t0, "run_dir": str(res.run_dir),
                                    "method_args": cfg.method_args}
    # Figure: momentum-encoder features of the same training images for every method (OSESSL Fig. 3 style).
    from .data import load_dataset
    train_set = load_dataset("cifar10", data_root, "train")
    idx = torch.randperm(len(train_set), generator=torch.Generator().manual_seed(0))[:embed_points]
    sub = train_set.subset(idx)
    mean, std = eval_normalization(train_set)
    labels = {"resa": "ReSA", "osessl": "OSESSL"}
    embedded = {}
    from tqdm.auto import tqdm
    with tqdm(total=2 * len(results), desc=f"t-SNE/UMAP of {embed_points} images", unit="embedding",
              disable=not progress) as bar:
        for name, res in results.items():
            feats = extract_features(res.method.eval_encoder(), sub.images, mean, std, device=dev).numpy()
            embedded[name] = {}
            for algo in ("tsne", "umap"):
                bar.set_postfix_str(f"{name} {algo}")
                embedded[name][algo] = embed_2d(feats, method=algo, seed=0)
                bar.update()
    # Rows: t-SNE then UMAP; columns: the methods.
    for algo, algo_name in (("tsne", "t-SNE"), ("umap", "UMAP")):
        for name in results:
            panels[f"{labels.get(name, name)} {algo_name}"] = (embedded[name][algo], sub.labels.numpy())
    plot_embeddings(panels, train_set.classes, path=out / "embeddings.png", ncols=len(results), point_size=4,
                    title=f"CIFAR-10 train representations ({budget['epochs']} epochs, {dev.type})")
    summary["wall_seconds"] = time.perf_counter() - t_start
    summary["provenance"] = provenance(dev)
    atomic_write_json(out / "summary.json", summary)
    print(f"\n{'method':<8} {'k-NN top-1 (%)':>15}")
    for name, m in summary["methods"].items():
        print(f"{name:<8} {m['knn_top1']:>15.2f}")
    print(f"figure: {out / 'embeddings.png'}   summary: {out / 'summary.json'}")
    return summary
