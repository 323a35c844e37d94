"""Where the data lives when nobody says: the one definition that the notebooks, the quickstart, the CLI and
TrainConfig share, so that moving the shared folder is a one-line change."""
from __future__ import annotations

from pathlib import Path

from .provenance import REPO_ROOT


def default_data_root() -> Path:
    """`<repo>/../shared/data`: the shared folder beside the clone, where CI and the workstations keep CIFAR-10."""
    return REPO_ROOT.parent / "shared" / "data"
