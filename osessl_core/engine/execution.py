"""How a run executes on its device: precision, compilation, CUDA graphs, memory format and DDP.

Every choice defaults to the fast path on CUDA and to plain eager float32 on the CPU, where the tests run; none
changes what is learned beyond floating-point rounding (the CPU tests compare eager and compiled steps).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
from torch import nn

from ..config import ConfigError
from ..data.augment import ViewAugment
from ..distributed import is_distributed
from ..models.sync_bn import convert_sync_batchnorm


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} requested but CUDA is not available; use --device cpu")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())  # torchrun: set to LOCAL_RANK by init_from_env
    return device


def view_augmentations(method: nn.Module) -> list[ViewAugment]:
    """Every augmentation pipeline held by the method or its submodules."""
    return [v for m in method.modules() for v in vars(m).values() if isinstance(v, ViewAugment)]


@dataclass
class Execution:
    device: torch.device
    amp: bool            # bf16 autocast of the loss
    compile: bool        # the loss (forward + backward) and each augmentation as compiled graphs
    cuda_graphs: bool    # the compiled loss replayed as CUDA graphs
    channels_last: bool
    tf32: bool

    @classmethod
    def of(cls, cfg) -> "Execution":
        device = resolve_device(cfg.device)
        cuda = device.type == "cuda"
        compile_ = cuda if cfg.compile is None else cfg.compile
        # CUDA graphs need static addresses; DDP's bucketed all-reduce in backward is kept out of them.
        default_graphs = cuda and compile_ and not is_distributed()
        graphs = default_graphs if cfg.cuda_graphs is None else cfg.cuda_graphs
        if graphs and not (cuda and compile_):
            raise ValueError("cuda_graphs needs compile on a CUDA device")
        return cls(device, cuda if cfg.amp is None else cfg.amp, compile_, graphs,
                   cuda if cfg.channels_last is None else cfg.channels_last, cuda and cfg.tf32 is not False)

    def apply_backend_flags(self) -> None:
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
            torch.backends.cuda.matmul.allow_tf32 = self.tf32
            torch.backends.cudnn.allow_tf32 = self.tf32

    def place(self, method: nn.Module) -> nn.Module:
        """The method on the device (SyncBatchNorm under DDP, the memory format); returns it."""
        method = convert_sync_batchnorm(method, self.device).to(self.device)
        if self.channels_last:
            method.to(memory_format=torch.channels_last)
        return method

    def wrap(self, method: nn.Module):
        """(the module whose forward is the loss, possibly DDP-wrapped; the callable the trainer steps with)."""
        model = method
        if is_distributed():
            # Buffers are not broadcast: BN statistics are synchronised and the banks are filled from all ranks,
            # so they are identical everywhere already.
            with warnings.catch_warnings():  # broadcast_buffers=False is still the way to skip the buffer sync
                warnings.simplefilter("ignore", FutureWarning)
                model = nn.parallel.DistributedDataParallel(
                    method, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                    broadcast_buffers=False)
        loss_fn = model
        if self.compile:
            # The loss (forward, and backward through AOTAutograd) as one graph, replayed as CUDA graphs on one GPU;
            # each augmentation pipeline as another (its random draw stays eager: see data/augment.py).
            loss_fn = torch.compile(model, mode="reduce-overhead" if self.cuda_graphs else None)
            for aug in view_augmentations(method):
                aug.compile()
        return model, loss_fn

    def to_memory_format(self, images: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Image views in the network's memory format (channels_last on the fast path)."""
        if not self.channels_last:
            return images
        return {k: v.contiguous(memory_format=torch.channels_last) for k, v in images.items()}

    def autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp)

    def step_begin(self) -> None:
        if self.cuda_graphs:
            torch.compiler.cudagraph_mark_step_begin()  # the previous step's graph outputs are consumed
