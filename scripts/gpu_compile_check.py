"""Check the default GPU path (compiled loss, bf16, channels_last) against eager, for each method, in one process.

Runs `steps` steps of each (method, compile) pair on CIFAR-10 with the real recipe, after the first `warmup`
steps (which include compilation), and reports images/s from the metrics the trainer logs, plus the ratio
compiled / eager measured in this same run. Usage: python scripts/gpu_compile_check.py DATA_ROOT OUT_JSON
"""
import json
import sys
import time

import torch

from osessl_core.config import TrainConfig
from osessl_core.engine import Trainer
from osessl_core.provenance import provenance

data_root, out = sys.argv[1], sys.argv[2]
warmup, steps = 30, 60
rows = []
for method in ("resa", "osessl"):
    for compiled in (False, True):
        cfg = TrainConfig(method=method, data_root=data_root, epochs=50, max_steps=warmup + steps, log_every=warmup,
                          run_dir=f"runs/check-{method}-{compiled}", resume=False, progress=False, compile=compiled,
                          eval_knn=False)
        t0 = time.perf_counter()
        torch.cuda.reset_peak_memory_stats()
        result = Trainer(cfg).fit()
        timed = result.metrics[1:]  # intervals after the first (which holds compilation and cudnn autotuning)
        n, secs = sum(r["steps"] for r in timed), sum(r["seconds"] for r in timed)
        rows.append({"method": method, "compiled": compiled, "timed_steps": n,
                     "images_per_s": n * cfg.batch_size / secs, "ms_per_step": 1000 * secs / n,
                     "loss_after": timed[-1]["loss"], "first_interval_s": result.metrics[0]["seconds"],
                     "peak_gb": torch.cuda.max_memory_allocated() / 1e9, "total_s": time.perf_counter() - t0})
        print(json.dumps(rows[-1]), flush=True)
for m in ("resa", "osessl"):
    e, c = [r for r in rows if r["method"] == m]
    print(f"{m}: compiled/eager throughput = {c['images_per_s'] / e['images_per_s']:.2f}")
json.dump({"rows": rows, "warmup_steps": warmup, "batch_size": 256, "provenance": provenance("cuda")},
          open(out, "w"), indent=2)
