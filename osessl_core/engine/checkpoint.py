"""Atomic checkpoints: a crash while writing never leaves a truncated file where the last good one was."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

FORMAT_VERSION = 1


class IncompatibleCheckpointError(RuntimeError):
    pass


def atomic_write_bytes(path: Path, write) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, lambda f: f.write((json.dumps(obj, indent=2, sort_keys=True) + "\n").encode()))


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    atomic_write_bytes(path, lambda f: torch.save({"format_version": FORMAT_VERSION, **state}, f))


def load_checkpoint(path: Path, map_location="cpu") -> dict[str, Any]:
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # truncated or foreign file
        raise IncompatibleCheckpointError(f"cannot read checkpoint {path}: {e}") from e
    if not isinstance(state, dict) or state.get("format_version") != FORMAT_VERSION:
        raise IncompatibleCheckpointError(f"{path} is not an osessl checkpoint of format {FORMAT_VERSION}")
    return state


def check_compatible(saved_cfg: dict[str, Any], cfg: dict[str, Any], fields, path: Path) -> None:
    diffs = [f"{k}: checkpoint={saved_cfg.get(k)!r} now={cfg.get(k)!r}" for k in fields if saved_cfg.get(k) != cfg.get(k)]
    if diffs:
        raise IncompatibleCheckpointError(
            f"checkpoint {path} was trained with a different setup ({'; '.join(diffs)}); "
            "use another run_dir or resume=False")
