"""Frozen-encoder feature extraction for evaluation (kNN, linear probe, clustering, embeddings)."""
from __future__ import annotations

import torch
from torch import nn
from tqdm.auto import tqdm


def _module_device(module: nn.Module) -> torch.device:
    for t in module.parameters():
        return t.device
    for t in module.buffers():
        return t.device
    return torch.device("cpu")


@torch.no_grad()
def extract_features(encoder: nn.Module, images: torch.Tensor, mean, std, batch_size: int = 1000,
                     device=None, progress: bool = False) -> torch.Tensor:
    """Encode uint8 images [N, 3, H, W] as float32 features [N, D] on the CPU.

    Images are only normalised ((x/255 - mean)/std), never augmented. The encoder runs in eval mode so
    BatchNorm uses its running statistics; every submodule's train/eval flag is restored afterwards.
    Kept in fp32 (no autocast): evaluation numbers should not depend on reduced-precision rounding.
    """
    if images.dtype != torch.uint8 or images.dim() != 4:
        raise ValueError(f"images must be a uint8 tensor [N, C, H, W], got {images.dtype} {tuple(images.shape)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    device = torch.device(device) if device is not None else _module_device(encoder)
    mean = torch.as_tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    std = torch.as_tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1)

    # Remember each submodule's flag (not just the root's) so mixed modes, e.g. frozen BN, survive.
    modes = [(m, m.training) for m in encoder.modules()]
    encoder.eval()
    try:
        chunks = []
        for start in tqdm(range(0, len(images), batch_size), desc="features", disable=not progress):
            x = images[start:start + batch_size].to(device, non_blocking=True).float().div_(255)
            feats = encoder((x - mean) / std)
            chunks.append(feats.flatten(1).float().cpu())
    finally:
        for m, mode in modes:
            m.training = mode
    if not chunks:
        raise ValueError("images is empty")
    return torch.cat(chunks)
