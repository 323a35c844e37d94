"""Result files: `<name>.json` (rows, notebook fields, provenance) and `<name>.csv`, and figures as PNG + PDF.

A result file holds only numbers computed by the run that wrote it; the paper's numbers appear only in columns
named `paper_*`, with `diff_*` = measured - paper (see paper.py).
"""
from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..files import atomic_write_json
from ..provenance import REPO_ROOT, provenance
from .paths import resolve_path


def plain(x):
    """JSON-safe copy: numpy/torch scalars become Python numbers, paths inside the repository become relative to
    it (a result file means the same on every clone); non-finite floats are an error."""
    if isinstance(x, dict):
        return {str(k): plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [plain(v) for v in x]
    if isinstance(x, torch.Tensor):
        return plain(x.tolist())
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, Path):
        x = str(x)
    if isinstance(x, str) and x.startswith(str(REPO_ROOT) + "/"):
        return x[len(str(REPO_ROOT)) + 1:]
    if isinstance(x, float) and not math.isfinite(x):
        raise ValueError(f"refusing to write a non-finite number ({x}) into a result file")
    return x


def write_results(out_dir: str | Path, name: str, rows: list[dict], extra: dict | None = None, *,
                  device: str | torch.device = "cpu", config: dict | None = None, seed: int | None = None,
                  data_source: Any = None, wall_seconds: float | None = None) -> dict[str, Path]:
    """Write `name`.json (rows + extra + provenance) and `name`.csv (the rows) into out_dir; return the paths.

    Provenance: git SHA, device and versions (osessl_core.provenance), plus the config, seed, wall time and data
    source given here. Nested values in the CSV are JSON-encoded.
    """
    out = resolve_path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    payload = plain({
        "name": name, "rows": rows, **(extra or {}),
        "config": config, "seed": seed, "data_source": data_source, "wall_seconds": wall_seconds,
        "provenance": provenance(device)})
    paths = {"json": out / f"{name}.json", "csv": out / f"{name}.csv"}
    atomic_write_json(paths["json"], payload)
    columns: list[str] = []
    for row in payload["rows"]:
        columns += [k for k in row if k not in columns]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in payload["rows"]:
        writer.writerow({k: json.dumps(v) if isinstance(v, (dict, list)) else v for k, v in row.items()})
    paths["csv"].write_text(buf.getvalue())
    return paths


def save_figure(fig, out_dir: str | Path, stem: str, dpi: int = 150) -> list[Path]:
    out = resolve_path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{stem}.png", out / f"{stem}.pdf"]
    fig.savefig(paths[0], dpi=dpi, bbox_inches="tight")
    fig.savefig(paths[1], bbox_inches="tight")
    return paths
