"""Where the data lives when nobody says: the one definition that TrainConfig, the CLI, the quickstart and the
notebooks share, so that moving the shared folder is a one-line change. `$OSESSL_DATA` overrides it."""
from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def default_data_root() -> Path:
    """`$OSESSL_DATA`, else `<repo>/../shared/data`: the shared folder beside the clone, where CI and the
    workstations keep CIFAR-10."""
    return Path(os.environ.get("OSESSL_DATA") or REPO_ROOT.parent / "shared" / "data")
