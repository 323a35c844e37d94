"""Table 17's training cost: short timed trainer runs, peak memory, and the benchmark command's result files."""
from __future__ import annotations

import json
import math
import resource
import sys
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..config import TrainConfig
from .configs import run_dir_for
from .datasets import is_streamed
from .paths import resolve_path

if TYPE_CHECKING:
    from .runner import Experiment


def peak_memory(device: torch.device) -> dict[str, Any]:
    """GPU peak allocated memory (GB) on CUDA, "n/a" on CPU; plus the process' lifetime max RSS (GB)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    rss_gb = rss / 2**30 if sys.platform == "darwin" else rss / 2**20
    gpu = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else "n/a"
    return {"gpu_peak_memory_gb": gpu, "process_max_rss_gb": rss_gb}


def time_training(exp: Experiment, cfg: TrainConfig, label: str, warmup_steps: int, measure_steps: int) -> dict:
    """A fresh short run: `warmup_steps` (compilation, cudnn autotuning) then `measure_steps` timed steps.

    Returns images/s and seconds per epoch over the measured steps (from the trainer's metrics rows, which
    include the per-epoch checkpoint writes that fall inside them) and peak memory. A streamed folder (ImageNet)
    times the real streamed loop: loader workers decoding and cropping each batch (cfg.loader_workers,
    cfg.decode), so its images/s is what the input pipeline and the step together sustain.
    """
    from ..engine import Trainer
    # Log (and so time) in intervals that end exactly where the warm-up ends.
    cfg = replace(cfg, run_dir=str(run_dir_for(cfg, exp.run_root, f"bench-{label}")), resume=False,
                  max_steps=warmup_steps + measure_steps, log_every=math.gcd(warmup_steps, measure_steps),
                  ckpt_every=10**9, eval_knn=False, eval_linear=False)
    exp.note_dataset(cfg.dataset, cfg.data_root)
    trainer = Trainer(cfg)
    if trainer.device.type == "cuda":
        torch.cuda.synchronize(trainer.device)
        torch.cuda.reset_peak_memory_stats(trainer.device)
    try:
        result = trainer.fit()
    finally:
        trainer.close()  # the run directory's lock and a streamed folder's loader workers
    rows = [r for r in result.metrics if r["step"] > warmup_steps]
    seconds = sum(r["seconds"] for r in rows)
    images = sum(r["steps"] for r in rows) * cfg.batch_size
    ips = images / seconds if seconds > 0 else None
    return {"method": cfg.method, "dataset": cfg.dataset, "arch": cfg.arch, "image_size": trainer.data.image_size,
            "streamed": is_streamed(trainer.train_set),
            "measured_steps": sum(r["steps"] for r in rows), "batch_size": cfg.batch_size,
            "images_per_s": ips, "seconds_per_epoch": trainer.steps_per_epoch * cfg.batch_size / ips if ips else None,
            "steps_per_epoch": trainer.steps_per_epoch, **peak_memory(trainer.device)}


def load_bench(bench_dir: str | Path) -> list[dict]:
    """Rows from a benchmark command's results/bench/*.json, if any: a file holding {"rows": [...]} contributes
    its rows, any other JSON object is one row. Unreadable files are reported and skipped."""
    rows = []
    for path in sorted(resolve_path(bench_dir).glob("*.json")):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            print(f"skipping {path}: {e}")
            continue
        items = data.get("rows", [data]) if isinstance(data, dict) else data if isinstance(data, list) else []
        rows += [{"file": path.name, **r} for r in items if isinstance(r, dict)]
    return rows
