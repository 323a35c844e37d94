"""Evaluation over streamed image folders (ImageNet-size datasets that never sit in memory as one tensor).

The building blocks of the ImageNet linear and semi-supervised protocols: frozen features in dataset order,
top-k accuracy, normalised training batches, DDP wrapping and per-epoch checkpoints. Images come from
`osessl_core.data.loader` (uint8 batches, each rank a contiguous shard) and are normalised on the device. Every
collective goes through `osessl_core.distributed`, so a plain `python` process needs no process group.
"""
from __future__ import annotations

import contextlib
import itertools
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from .. import distributed as D
from ..data.augment import normalize


@contextlib.contextmanager
def eval_mode(module: nn.Module):
    """Eval mode for the block; every submodule's own train/eval flag is restored afterwards (e.g. frozen BN)."""
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield module
    finally:
        for m, mode in modes:
            m.training = mode


def autocast(device: torch.device, amp: bool):
    # bf16 needs no loss scaling; only the encoder forward runs under it, heads and losses stay float32.
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bool(amp))


def resolve_ranks(world_size: int | None, rank: int | None) -> tuple[int, int]:
    w = D.world_size() if world_size is None else int(world_size)
    r = D.rank() if rank is None else int(rank)
    if not 0 <= r < w:
        raise ValueError(f"rank must be in [0, {w}), got {r}")
    return w, r


def _eval_batches(dataset, size, batch_size, world_size, rank, workers, device):
    from ..data.loader import eval_batches  # lazy: the loader pulls in the image decoders
    return eval_batches(dataset, size=size, batch_size=batch_size, world_size=world_size, rank=rank,
                        workers=workers, device=device)


@torch.no_grad()
def stream_features(encoder: nn.Module, dataset, size: int = 224, batch_size: int = 256, device="cpu",
                    amp: bool = False, world_size: int | None = None, rank: int | None = None, gather: bool = True,
                    on_all_ranks: bool = True, dtype: torch.dtype = torch.float32, workers: int | None = None,
                    progress: bool = False):
    """Frozen features of every image (eval_view: resize + centre crop to `size`) -> (feats [N, D] CPU, labels [N]).

    The encoder runs in eval mode (BN running statistics; flags restored afterwards), on batches normalised with
    the dataset's mean/std on the device, in float32 unless amp (bf16 autocast). Features are stored as `dtype`:
    float16 halves ImageNet's 1.28 M x 2048 to 5 GB, and knn_accuracies still computes in float32.
    labels are the loader's (with bad_files="skip" a substitute image brings its own label).

    Each rank encodes its contiguous shard (batch_size images per rank and step). With gather (the default) and a
    process group, every step all-gathers the ranks' batches, and the shards are joined in rank order, i.e.
    dataset order; on_all_ranks=False keeps them on rank 0 only (the others return (None, None)), so 8 ranks on
    one host do not hold 8 copies. gather=False returns this rank's shard only, in order (the caller merges).
    """
    device = torch.device(device)
    w, r = resolve_ranks(world_size, rank)
    collective = gather and w > 1
    if collective and not (D.is_distributed() and D.world_size() == w):
        raise ValueError(f"gather over {w} ranks needs an initialised process group of that size "
                         "(or pass gather=False and merge the shards yourself)")
    keep = not collective or on_all_ranks or r == 0
    parts: list[list[tuple[torch.Tensor, torch.Tensor]]] = [[] for _ in range(w if collective else 1)]
    batches = iter(_eval_batches(dataset, size, batch_size, w, r, workers, device))
    bar = tqdm(total=len(dataset) if collective else None, desc="features", disable=not progress or r != 0)
    with eval_mode(encoder):
        while True:
            batch = next(batches, None)
            if batch is not None:
                images, labels, _ = batch
                with autocast(device, amp):
                    f = encoder(normalize(images.to(device, non_blocking=True), dataset.mean, dataset.std))
                f, labels = f.flatten(1).float(), torch.as_tensor(labels).to(device).long()
            if not collective:
                if batch is None:
                    break
                parts[0].append((f.to("cpu", dtype), labels.cpu()))
                bar.update(len(f))
                continue
            # Shards may differ by an image, so a rank can run out a step early: every step first exchanges
            # (rows, width), and a rank without a batch takes part with zero rows until all are done.
            meta = torch.tensor([len(f), f.shape[1]] if batch is not None else [0, 0], device=device)
            counts, widths = D.gather_nograd(meta[None]).T.tolist()
            if sum(counts) == 0:
                break
            if batch is None:
                f = torch.zeros(0, max(widths), device=device)
                labels = torch.zeros(0, dtype=torch.long, device=device)
            pad = max(counts) - len(f)  # all_gather needs equal shapes
            f_all = D.gather_nograd(torch.cat([f, f.new_zeros(pad, f.shape[1])])).split(max(counts))
            y_all = D.gather_nograd(torch.cat([labels, labels.new_zeros(pad)])).split(max(counts))
            if keep:
                for j, c in enumerate(counts):
                    if c:
                        parts[j].append((f_all[j][:c].to("cpu", dtype), y_all[j][:c].cpu()))
            bar.update(sum(counts))
    bar.close()
    if not keep:
        return None, None
    chunks = [c for rank_parts in parts for c in rank_parts]  # rank-major: contiguous shards -> dataset order
    if not chunks:
        raise ValueError("the dataset (or this rank's shard) is empty")
    feats = torch.cat([c[0] for c in chunks])
    labels = torch.cat([c[1] for c in chunks])
    if collective and len(feats) != len(dataset):
        raise RuntimeError(f"the ranks' shards hold {len(feats)} images, the dataset {len(dataset)}")
    return feats, labels


@torch.no_grad()
def stream_accuracy(model: nn.Module, dataset, size: int = 224, batch_size: int = 256, device="cpu",
                    amp: bool = False, ks=(1, 5), world_size: int | None = None, rank: int | None = None,
                    workers: int | None = None, progress: bool = False) -> dict[str, float]:
    """Top-k accuracy (percent) of a classifier over eval_view batches: {"top1": ..., "top5": ...}.

    Each rank scores its shard; the hit counts are summed over the process group (when there is one), so every
    rank returns the whole dataset's accuracy. k is capped at the number of classes.
    """
    device = torch.device(device)
    w, r = resolve_ranks(world_size, rank)
    ks = tuple(int(k) for k in ks)
    hits = torch.zeros(len(ks) + 1, dtype=torch.float64, device=device)  # last entry: images seen
    with eval_mode(model):
        for images, labels, _ in tqdm(_eval_batches(dataset, size, batch_size, w, r, workers, device),
                                      desc="evaluate", disable=not progress or r != 0):
            with autocast(device, amp):
                logits = model(normalize(images.to(device, non_blocking=True), dataset.mean, dataset.std))
            y = torch.as_tensor(labels).to(device).long()
            top = logits.float().topk(min(max(ks), logits.shape[1]), dim=1).indices == y[:, None]
            for i, k in enumerate(ks):
                hits[i] += top[:, :k].any(dim=1).sum()
            hits[-1] += len(y)
    if D.is_distributed() and w > 1:
        D.all_reduce_(hits)
    total = max(float(hits[-1]), 1.0)
    return {f"top{k}": 100.0 * float(h) / total for k, h in zip(ks, hits[:-1].tolist())}


def train_batches(dataset, views, seed: int, batch_size: int, world_size: int, rank: int, start_step: int,
                  stop_step: int, device, workers: int | None = None):
    """Normalised first views and their labels for steps [start_step, stop_step) of this rank's share (one
    loader for the whole range, so its workers keep prefetching across epoch boundaries)."""
    from ..data.loader import view_batches
    labels = torch.as_tensor(dataset.labels).long()
    for images, ids in view_batches(dataset, views, seed, batch_size, world_size=world_size, rank=rank,
                                    start_step=start_step, stop_step=stop_step, workers=workers, device=device):
        x = normalize(images[0].to(device, non_blocking=True), dataset.mean, dataset.std)
        yield x, labels[torch.as_tensor(ids).cpu().long()].to(device, non_blocking=True)


def per_rank_batch(global_batch: int, world_size: int, num_images: int) -> int:
    """The protocols state the global batch (256); each rank takes an equal share of it."""
    if global_batch < world_size or global_batch % world_size:
        raise ValueError(f"batch size {global_batch} must be a multiple of the {world_size} ranks")
    if global_batch > num_images:
        raise ValueError(f"batch size {global_batch} exceeds the {num_images} training images")
    return global_batch // world_size


def wrap_ddp(module: nn.Module, device: torch.device, world_size: int) -> nn.Module:
    """DDP when a process group of more than one rank is active (gradients averaged over ranks, rank 0's
    parameters broadcast at construction), else the module itself."""
    if world_size <= 1 or not D.is_distributed():
        return module
    from torch.nn.parallel import DistributedDataParallel
    return DistributedDataParallel(module, device_ids=[device] if device.type == "cuda" else None)


def save_checkpoint(path, state: dict) -> None:
    """Main rank writes atomically (a crash never leaves a truncated checkpoint); every rank waits for it."""
    if D.is_main_process():
        from ..files import atomic_write_bytes
        atomic_write_bytes(Path(path), lambda f: torch.save(state, f))
    D.barrier()


def load_checkpoint(path, spec: dict) -> dict | None:
    """The checkpoint at path if there is one, after checking it was written for the same protocol `spec`."""
    if path is None or not Path(path).exists():
        return None
    state = torch.load(path, map_location="cpu", weights_only=True)
    saved = state.get("spec", {})
    diff = sorted(k for k in set(saved) | set(spec) if saved.get(k) != spec.get(k))
    if diff:
        raise ValueError(f"checkpoint {path} was written for a different run: "
                         + ", ".join(f"{k}={saved.get(k)!r} (now {spec.get(k)!r})" for k in diff[:5])
                         + "; delete it or pass another checkpoint path")
    return state


def fit_classifier(forward, module: nn.Module, opt, sched, train_set, view, *, seed: int, global_batch: int,
                   epochs: int, device, step_schedule: bool, checkpoint=None, spec: dict | None = None,
                   stop_after_epochs: int | None = None, workers: int | None = None, progress: bool = False,
                   desc: str = "train") -> dict:
    """The streamed cross-entropy loop both ImageNet protocols share: `forward(x) -> logits` on normalised
    `view` crops, SGD through `opt`, `sched` stepped per step (step_schedule) or per epoch.

    The epoch's images come from the loader's view_batches (order and crops a function of seed, epoch and image,
    so any rank count sees the same global batches; the last partial batch is dropped). `module` holds what
    trains (its state, opt's and sched's go into `checkpoint` after every epoch); a run restarted with the same
    checkpoint path and `spec` continues after the last finished epoch. stop_after_epochs ends this call early
    (jobs with a wall-clock limit); the result then says complete=False.
    """
    import torch.nn.functional as F

    from ..data.order import BatchPlan
    device = torch.device(device)
    w, r = resolve_ranks(None, None)
    plan = BatchPlan(len(train_set), per_rank_batch(global_batch, w, len(train_set)), w)
    steps = plan.steps_per_epoch
    spec = dict(spec or {}, steps_per_epoch=steps, global_batch=global_batch)
    start, last_loss = 0, float("nan")
    state = load_checkpoint(checkpoint, spec)
    if state is not None:
        module.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        start, last_loss = int(state["epoch"]), float(state["train_loss"])
    stop = epochs if stop_after_epochs is None else min(epochs, start + stop_after_epochs)
    batches = iter(train_batches(train_set, [view], seed, plan.batch_size, w, r, start * steps, stop * steps,
                                 device, workers))
    done = 0
    for epoch in range(start, stop):
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)  # summed on the device: no per-step sync
        for x, y in tqdm(itertools.islice(batches, steps), total=steps, desc=f"{desc} {epoch + 1}/{epochs}",
                         disable=not progress or r != 0):
            loss = F.cross_entropy(forward(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if step_schedule:
                sched.step()
            loss_sum += loss.detach()
        if not step_schedule:
            sched.step()
        if w > 1 and D.is_distributed():
            D.all_reduce_(loss_sum)
        last_loss = float(loss_sum) / (steps * w)
        done += 1
        if checkpoint is not None:
            save_checkpoint(checkpoint, {"spec": spec, "epoch": epoch + 1, "train_loss": last_loss,
                                         "model": module.state_dict(), "opt": opt.state_dict(),
                                         "sched": sched.state_dict()})
    finished = start + done
    return {"epochs_done": finished, "complete": finished >= epochs, "train_loss": last_loss,
            "steps_per_epoch": steps}
