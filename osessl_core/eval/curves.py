"""Training curves from runs' metrics.jsonl: loss terms, lr, momentum and the online k-NN over steps."""
from __future__ import annotations

import json
import math
from pathlib import Path

# Row keys that are bookkeeping, not curves.
NOT_CURVES = {"step", "epoch", "steps", "seconds", "images_per_s"}


def read_metrics(run_dir: str | Path) -> list[dict]:
    """The rows of a run's metrics.jsonl; an empty or partial line (a crash mid-write) is skipped."""
    path = Path(run_dir) / "metrics.jsonl"
    rows = []
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def plot_metrics(runs: dict[str, str | Path] | str | Path, keys: list[str] | None = None, ncols: int = 4):
    """One panel per metric key (default: every key any run logged), one line per run, x = epoch."""
    from matplotlib.figure import Figure
    if not isinstance(runs, dict):
        runs = {Path(runs).name: runs}
    data = {label: read_metrics(d) for label, d in runs.items()}
    empty = [label for label, rows in data.items() if not rows]
    if len(empty) == len(data):
        raise ValueError(f"no metrics.jsonl rows in {', '.join(str(runs[l]) for l in empty)}")
    if keys is None:
        keys = list(dict.fromkeys(k for rows in data.values() for r in rows for k in r if k not in NOT_CURVES))
    ncols = max(1, min(ncols, len(keys)))
    nrows = math.ceil(len(keys) / ncols)
    fig = Figure(figsize=(3.4 * ncols, 2.6 * nrows + 0.6), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, key in zip(axes, keys):
        for i, (label, rows) in enumerate(data.items()):
            points = [(r["epoch"], r[key]) for r in rows if isinstance(r.get(key), (int, float))]
            if points:
                style = "o-" if key == "knn_monitor_top1" else "-"
                ax.plot(*zip(*points), style, color=f"C{i}", label=label, markersize=3)
        ax.set_title(key, fontsize=9)
        ax.set_xlabel("epoch", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in axes[len(keys):]:
        ax.set_axis_off()
    handles, labels = axes[0].get_legend_handles_labels()
    if len(data) > 1:
        fig.legend(handles, labels, loc="outside lower center", ncol=len(labels), frameon=False, fontsize=8)
    return fig
