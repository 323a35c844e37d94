"""Paths as the notebooks give them: relative to the repository root, whatever the working directory."""
from __future__ import annotations

from pathlib import Path

from ..provenance import REPO_ROOT

CIFAR_ARCHIVE_NAME = "cifar10-jpg.tar.gz"  # the CIFAR-10 archive inside a data root


def resolve_path(path: str | Path) -> Path:
    """Relative paths are taken from the repository root (notebooks run with cwd notebooks/ or the root)."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else REPO_ROOT / p
