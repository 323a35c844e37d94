"""Training-step benchmark: every registered method, eager fp32 vs eager bf16 vs the fast path, in one process.

Headline numbers come from back-to-back steps timed with CUDA events (no host sync inside the timed loop). The
per-phase breakdown comes from a second, instrumented pass: data+augmentation, network forward (module hooks),
loss (forward_loss minus the network forward), backward, optimizer (+EMA and memory updates). The fast path is
compiled, so only its total is meaningful (phases of a compiled graph overlap); its breakdown is reported anyway
for the phases around the compiled region. Ratios are always taken between rows of the same run.
"""
from __future__ import annotations

import contextlib
import gc
import resource
import tempfile
import time
import warnings
from collections import defaultdict
from dataclasses import fields, replace
from pathlib import Path

import torch

from ..config import TrainConfig
from ..methods import METHODS
from ..provenance import provenance
from ..files import atomic_write_json
from ..data.order import BatchPlan
from .batches import load_train_data
from .execution import resolve_device
from .trainer import Trainer

# Submodules timed as "network_forward": any whose attribute name ends in one of these (e.g. momentum_encoder,
# teacher_head, base.projector); the outermost match only, so a network is never counted twice.
NETWORKS = ("encoder", "projector", "predictor", "head")
MODES = {  # name -> TrainConfig overrides; None = the trainer's default for the device
    # The plain reference path: eager, strict fp32 (no TF32 tensor-core rounding), contiguous NCHW.
    "eager_fp32": dict(amp=False, compile=False, cuda_graphs=False, channels_last=False, tf32=False),
    "eager_bf16": dict(amp=True, compile=False, cuda_graphs=False, channels_last=None, tf32=None),
    # The default CUDA path: bf16 autocast, channels_last, compiled loss and augmentations, CUDA graphs.
    "fast": dict(amp=None, compile=None, cuda_graphs=None, channels_last=None, tf32=None),
}


class PhaseTimer:
    """Accumulates wall time per named phase: CUDA events on GPU, perf_counter on CPU (ops are synchronous)."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.spans: dict[str, list] = defaultdict(list)

    def mark(self):
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    @contextlib.contextmanager
    def __call__(self, name: str):
        start = self.mark()
        yield
        self.spans[name].append((start, self.mark()))

    def totals_ms(self) -> dict[str, float]:
        if self.cuda:
            torch.cuda.synchronize()
            return {k: sum(a.elapsed_time(b) for a, b in v) for k, v in self.spans.items()}
        return {k: 1000 * sum(b - a for a, b in v) for k, v in self.spans.items()}


def _hook_networks(method, timer: PhaseTimer) -> list:
    handles, stack = [], []
    nets = [(n, m) for n, m in method.named_modules() if n and n.rsplit(".", 1)[-1].endswith(NETWORKS)]
    outer = [m for n, m in nets if not any(n.startswith(o + ".") for o, _ in nets)]
    for net in outer:
        handles.append(net.register_forward_pre_hook(lambda m, i: stack.append(timer.mark())))
        handles.append(net.register_forward_hook(
            lambda m, i, o: timer.spans["network_forward"].append((stack.pop(), timer.mark()))))
    return handles


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def count_host_syncs(trainer: Trainer) -> int:
    """Synchronising CUDA calls (e.g. .item(), pageable copies) made by one training step, via sync-debug mode."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            trainer.train_step(trainer.batch(trainer.step))
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


def time_epoch(trainer: Trainer) -> float:
    """Wall seconds of one full epoch through `fit()`: the real loop, with its logging and end-of-epoch checkpoint."""
    trainer.cfg = replace(trainer.cfg, max_steps=trainer.step + trainer.steps_per_epoch)
    _sync(trainer.device)
    t0 = time.perf_counter()
    trainer.fit()
    _sync(trainer.device)
    return time.perf_counter() - t0


def bench_one(cfg: TrainConfig, train_set, warmup: int, steps: int, epoch: bool = False) -> dict:
    device = resolve_device(cfg.device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    trainer = Trainer(cfg, train_set)
    t0 = time.perf_counter()
    for _ in range(warmup):  # compilation and cudnn autotuning happen here
        trainer.train_step(trainer.batch(trainer.step))
    _sync(device)
    warmup_s = time.perf_counter() - t0
    timer = PhaseTimer(device)
    with timer("step"):  # back to back, no host sync inside
        for _ in range(steps):
            trainer.train_step(trainer.batch(trainer.step))
    total_ms = timer.totals_ms()["step"] / steps
    syncs = count_host_syncs(trainer) if device.type == "cuda" else None

    # Instrumented pass for the breakdown (synchronises per phase, so it is slower than the headline).
    phases = PhaseTimer(device)
    ex = trainer.execution
    handles = _hook_networks(trainer.method, phases) if not ex.compile else []
    for _ in range(steps):
        with phases("data_augment"):
            batch = trainer.batch(trainer.step)
        trainer.train_step(batch, phase=phases)
    for h in handles:
        h.remove()
    t = {k: v / steps for k, v in phases.totals_ms().items()}
    views_ms = t.pop("augment", 0.0)
    t["data_augment"] = t.get("data_augment", 0.0) + views_ms
    if "network_forward" in t:
        t["loss"] = t["forward_loss"] - t["network_forward"]
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    epoch_s = time_epoch(trainer) if epoch else None
    row = {"method": cfg.method, "amp": ex.amp, "compile": ex.compile, "cuda_graphs": ex.cuda_graphs,
           "channels_last": ex.channels_last, "tf32": ex.tf32,
           "ms_per_step": total_ms, "images_per_s": cfg.batch_size / total_ms * 1000,
           "breakdown_ms": {k: round(v, 4) for k, v in sorted(t.items())},
           "peak_gpu_memory_gib": peak, "host_syncs_per_step": syncs,
           "epoch_seconds_measured": epoch_s, "warmup_s": warmup_s,
           "max_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}
    del trainer
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return row


def summarize(rows: list[dict], methods: list[str], train_set, base: TrainConfig, warmup: int, steps: int,
              device: torch.device) -> dict:
    """The benchmark's JSON: rows, ratios between rows of this run, derived epoch times and provenance."""
    by = {(r["method"], r["mode"]): r for r in rows}
    ratios = {}
    for m in methods:
        if (m, "fast") in by and (m, "eager_fp32") in by:
            ratios[f"{m}_fast_speedup_vs_eager_fp32"] = by[m, "eager_fp32"]["ms_per_step"] / by[m, "fast"]["ms_per_step"]
    if ("osessl", "fast") in by and ("resa", "fast") in by:
        o, r = by["osessl", "fast"], by["resa", "fast"]
        ratios["osessl_vs_resa_step_time"] = o["ms_per_step"] / r["ms_per_step"]
        if o["peak_gpu_memory_gib"]:
            ratios["osessl_vs_resa_peak_memory"] = o["peak_gpu_memory_gib"] / r["peak_gpu_memory_gib"]
    steps_per_epoch = BatchPlan(len(train_set), base.batch_size).steps_per_epoch
    for r in rows:
        r["epoch_seconds"] = steps_per_epoch * r["ms_per_step"] / 1000
    return {"rows": rows, "ratios": ratios, "warmup_steps": warmup, "timed_steps": steps,
            "steps_per_epoch": steps_per_epoch, "batch_size": base.batch_size, "dataset": base.dataset,
            "n_train": len(train_set), "config": base.to_dict(), "provenance": provenance(device),
            "note": "epoch_seconds = steps_per_epoch x ms_per_step (derived from the measured step time); "
                    "epoch_seconds_measured (fast mode) = wall time of one epoch of the real training loop, "
                    "checkpoint included"}


def method_args_for(method: str, args: dict) -> dict:
    """The entries of `args` that `method` has parameters for (e.g. memory_size for the tiny CPU configuration)."""
    names = {f.name for f in fields(METHODS[method].Params)}
    return {k: v for k, v in args.items() if k in names}


def run_bench(base: TrainConfig, methods=None, modes=tuple(MODES), warmup: int = 20, steps: int = 50,
              compile_on_cpu: bool = False, out: str | Path | None = None, progress: bool = True) -> dict:
    device = resolve_device(base.device)
    methods = list(methods or METHODS)
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; registered: {sorted(METHODS)}")
    train_set = load_train_data(base)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for method in methods:
            for mode in modes:
                flags = dict(MODES[mode])
                if device.type != "cuda" and flags["compile"] is None and not compile_on_cpu:
                    flags["compile"] = False  # inductor's CPU compile takes minutes; opt in with compile_on_cpu
                cfg = replace(base, method=method, **flags, resume=False,
                              run_dir=f"{tmp}/{method}-{mode}", progress=False, eval_knn=False, eval_linear=False,
                              method_args=method_args_for(method, base.method_args))
                row = {"mode": mode, **bench_one(cfg, train_set, warmup, steps, epoch=mode == "fast")}
                rows.append(row)
                if out:  # after every row, so a run cut short keeps what it measured
                    atomic_write_json(Path(out), summarize(rows, methods, train_set, base, warmup, steps, device))
                if progress:
                    print(f"{method:<8} {mode:<11} {row['ms_per_step']:9.2f} ms/step {row['images_per_s']:10.0f} img/s"
                          f"  peak {row['peak_gpu_memory_gib'] or 0:.2f} GiB", flush=True)
    return summarize(rows, methods, train_set, base, warmup, steps, device)


def tiny_config(data_root: str, device: str = "cpu") -> TrainConfig:
    """A CPU-sized configuration (narrow network, small batch) so the benchmark itself is tested in CI."""
    return TrainConfig(data_root=data_root, device=device, subset=256, batch_size=32, width=8, proj_hidden=64,
                       proj_out=32, epochs=10, method_args={"memory_size": 64})
