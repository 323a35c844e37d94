"""BEiT blockwise masking of a patch grid (iBOT's `ImageFolderMask`, pred_shape="block"), batched and sync-free.

The reference masks one image at a time: each round tries up to 10 random blocks (area ~ U[(grid//3)^2, budget],
log aspect ratio ~ U[log a, log 1/a], uniform position) and keeps the first one that fits in the grid (h, w <
grid) and adds between 1 and `budget` new patches, where budget = ratio * grid^2 - (patches masked so far); it
stops at the first round in which no attempt fits. Here all samples run a fixed number of rounds at once, each
taking its random numbers from a uniforms tensor drawn up front (the draw stays outside compiled code), and rounds
after a sample has stopped change nothing. On the 8x8 grid at ratio 0.3 the reference stops within 10 rounds
(the last one failing) in all of 100,000 simulated draws, so 12 rounds reproduce its distribution.
"""
from __future__ import annotations

import math

import torch

MASK_ROUNDS = 12
MASK_ATTEMPTS = 10
MASK_UNIFORMS = MASK_ROUNDS * 4 * MASK_ATTEMPTS  # per round and attempt: area, aspect ratio, top, left


def block_masks(u: torch.Tensor, grid: int, ratio: float = 0.3, aspect: float = 0.3) -> torch.Tensor:
    """Masks from uniforms u (B, MASK_UNIFORMS) -> bool (B, grid*grid), row-major, True = masked."""
    b = u.shape[0]
    u = u.reshape(b, MASK_ROUNDS, 4, MASK_ATTEMPTS)
    high = ratio * grid * grid
    low = (grid // 3) ** 2
    log_lo, log_hi = math.log(aspect), math.log(1 / aspect)
    pos = torch.arange(grid, device=u.device, dtype=u.dtype)
    mask = torch.zeros(b, grid, grid, dtype=torch.bool, device=u.device)
    count = torch.zeros(b, device=u.device, dtype=u.dtype)
    active = torch.ones(b, dtype=torch.bool, device=u.device)
    rows = torch.arange(b, device=u.device)
    for r in range(MASK_ROUNDS):
        area_u, aspect_u, top_u, left_u = u[:, r].unbind(1)                    # each (B, attempts)
        budget = (high - count).unsqueeze(1)
        area = (low + (budget - low) * area_u).clamp_min(0)                      # random.uniform(low, budget)
        ar = torch.exp(log_lo + (log_hi - log_lo) * aspect_u)
        h = torch.round(torch.sqrt(area * ar))                                   # half to even, as Python's round
        w = torch.round(torch.sqrt(area / ar))
        top = torch.floor(top_u * (grid - h + 1))                                # random.randint(0, grid - h)
        left = torch.floor(left_u * (grid - w + 1))
        in_rows = (pos >= top.unsqueeze(-1)) & (pos < (top + h).unsqueeze(-1))  # (B, attempts, grid)
        in_cols = (pos >= left.unsqueeze(-1)) & (pos < (left + w).unsqueeze(-1))
        block = in_rows.unsqueeze(-1) & in_cols.unsqueeze(-2)                    # (B, attempts, grid, grid)
        new = h * w - (block & mask.unsqueeze(1)).sum((-1, -2))
        fits = (h < grid) & (w < grid) & (new > 0) & (new <= budget)
        first = fits.to(torch.uint8).argmax(1)                                   # the first attempt that fits
        take = active & fits.any(1) & (count < high)
        mask |= block[rows, first] & take.view(-1, 1, 1)
        count = count + torch.where(take, new[rows, first], 0.0)
        active = take                                                            # a round with no block ends it
    return mask.flatten(1)

