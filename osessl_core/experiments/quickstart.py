"""The README's quickstart as a notebook experiment: the smoke budget is passed to it, never swapped into it."""
from __future__ import annotations

from typing import TYPE_CHECKING

from .configs import SMOKE_QUICKSTART

if TYPE_CHECKING:
    from .runner import Experiment


def quickstart(exp: Experiment, epochs: int | None = None) -> dict:
    """osessl_core.quickstart.run_quickstart into exp.out_dir, on exp's data and device; a smoke experiment runs
    SMOKE_QUICKSTART, a full one the quickstart's own GPU/CPU budget. Returns its summary."""
    from ..quickstart import run_quickstart  # the engine is imported only when a notebook trains
    return run_quickstart(out_dir=exp.out_dir, data_root=exp.data_root, device=str(exp.torch_device), epochs=epochs,
                          progress=False, budget=SMOKE_QUICKSTART if exp.smoke else None)
