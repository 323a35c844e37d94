"""Checkpoints: written atomically (see files.py), versioned, and checked against the run's config on resume."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..files import atomic_write_bytes

FORMAT_VERSION = 1


class IncompatibleCheckpointError(RuntimeError):
    pass


def save_checkpoint(path: Path, state: dict[str, Any], keep_previous: Path | None = None) -> None:
    atomic_write_bytes(path, lambda f: torch.save({"format_version": FORMAT_VERSION, **state}, f), keep_previous)


def load_checkpoint(path: Path, map_location="cpu") -> dict[str, Any]:
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # truncated or foreign file
        raise IncompatibleCheckpointError(f"cannot read checkpoint {path}: {' '.join(str(e).split())[:200]}") from e
    if not isinstance(state, dict) or state.get("format_version") != FORMAT_VERSION:
        raise IncompatibleCheckpointError(f"{path} is not an osessl checkpoint of format {FORMAT_VERSION}")
    return state


def config_differences(saved_cfg: dict[str, Any], cfg: dict[str, Any], fields) -> list[str]:
    return [f"{k}: checkpoint={saved_cfg.get(k)!r} now={cfg.get(k)!r}" for k in fields if saved_cfg.get(k) != cfg.get(k)]


def check_compatible(saved_cfg: dict[str, Any], cfg: dict[str, Any], fields, path: Path) -> None:
    diffs = config_differences(saved_cfg, cfg, fields)
    if diffs:
        raise IncompatibleCheckpointError(
            f"checkpoint {path} was trained with a different setup ({'; '.join(diffs)}); "
            "use another run_dir or resume=False")
