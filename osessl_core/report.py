"""One page of everything measured: every `eval.json`, bench JSON and notebook result file under `results/`,
beside the paper's numbers, with budget, device, git SHA and date on each row, plus the plots a reader wants
(training curves, the bench breakdown, measured vs paper). `python -m osessl_core report` and
`notebooks/report.ipynb` call it. A notebook result written in smoke mode is listed as such, never as a result.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from .eval.curves import plot_metrics
from .experiments.paper import paper_row

ACCURACY = ("knn_top1", "linear_top1")
PAPER_EPOCHS = 1000  # Table 1's CIFAR budget (OSESSL paper, section 5 and Table 1's caption)


def _load(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def _stamp(prov: dict | None) -> dict[str, Any]:
    prov = prov or {}
    return {"device": prov.get("device"), "git_sha": (prov.get("git_sha") or "")[:12] or None,
            "date": (prov.get("time_utc") or "")[:10] or None}


def training_runs(root: Path) -> list[dict]:
    """A row per run directory (an eval.json beside a config.json)."""
    rows = []
    for ev_path in sorted(root.rglob("eval.json")):
        run = ev_path.parent
        ev, cfg = _load(ev_path), _load(run / "config.json")
        if ev is None or cfg is None:
            continue
        row = {"source": str(run.relative_to(root)), "kind": "training run", "method": cfg.get("method"),
               "dataset": cfg.get("dataset"), "arch": cfg.get("arch"), "budget_epochs": cfg.get("epochs"),
               "step": ev.get("step"), "features": ev.get("features"),
               **{k: ev.get(k) for k in ACCURACY}, **_stamp(ev.get("provenance"))}
        paper = paper_row("table1", row["dataset"], row["method"]) or {}
        row.update({f"paper_{k}": v for k, v in paper.items()})
        if paper:
            row["paper_budget_epochs"] = PAPER_EPOCHS
        rows.append(row)
    return rows


def notebook_results(root: Path) -> list[dict]:
    """A row per notebook result file (<notebook>/<notebook>.json with rows and provenance)."""
    rows = []
    for path in sorted(root.glob("*/*.json")):
        data = _load(path)
        if (not data or "rows" not in data or "provenance" not in data or path.stem != path.parent.name
                or path.stem == "report"):  # the report's own output is not a result
            continue
        for r in data["rows"]:
            rows.append({"source": str(path.relative_to(root)), "kind": "smoke (not a result)" if data.get("smoke")
                         else "notebook", "method": r.get("method", r.get("row")), "dataset": r.get("dataset"),
                         **{k: r.get(k) for k in ACCURACY}, **{f"paper_{k}": r.get(f"paper_{k}") for k in ACCURACY},
                         **_stamp(data["provenance"])})
    return rows


def bench_results(root: Path) -> list[dict]:
    """A row per (method, mode) of every bench JSON."""
    rows = []
    for path in sorted(root.rglob("bench*.json")):
        data = _load(path)
        if not data or "rows" not in data or "ratios" not in data:
            continue
        for r in data["rows"]:
            rows.append({"source": str(path.relative_to(root)), "method": r.get("method"), "mode": r.get("mode"),
                         "ms_per_step": r.get("ms_per_step"), "images_per_s": r.get("images_per_s"),
                         "epoch_seconds": r.get("epoch_seconds_measured", r.get("epoch_seconds")),
                         "peak_gpu_memory_gib": r.get("peak_gpu_memory_gib"), "breakdown_ms": r.get("breakdown_ms"),
                         "batch_size": data.get("batch_size"), **_stamp(data.get("provenance"))})
    return rows


def collect(root: str | Path) -> dict[str, list[dict]]:
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"results folder {root} does not exist")
    return {"runs": training_runs(root) + notebook_results(root), "bench": bench_results(root)}


def plot_measured_vs_paper(rows: list[dict]):
    """Grouped bars, one axis: each run's k-NN and linear top-1 beside the paper's (its budget in the label)."""
    from matplotlib.figure import Figure
    rows = [r for r in rows if any(isinstance(r.get(k), (int, float)) for k in ACCURACY)]
    if not rows:
        return None
    fig = Figure(figsize=(max(5.0, 1.6 * len(rows) + 2), 3.8), layout="constrained")
    ax = fig.subplots()
    x = np.arange(len(rows))
    width = 0.2
    for i, key in enumerate(ACCURACY):
        for j, (prefix, hatch) in enumerate((("", None), ("paper_", "//"))):
            values = [r.get(prefix + key) if isinstance(r.get(prefix + key), (int, float)) else np.nan for r in rows]
            ax.bar(x + (2 * i + j - 1.5) * width, values, width, color=f"C{i}", alpha=1.0 if not j else 0.45,
                   hatch=hatch, label=f"{'paper' if j else 'measured'} {key}")
    ax.set_xticks(x, [f"{r['method']}\n{r['dataset']}, {r.get('budget_epochs', '?')} ep" for r in rows], fontsize=8)
    ax.set_ylabel("top-1 (%)")
    ax.set_ylim(0, 100)
    ax.grid(axis="y", alpha=0.3)
    fig.legend(loc="outside right center", fontsize=8, frameon=False)
    fig.suptitle(f"Measured vs paper (the paper's CIFAR budget is {PAPER_EPOCHS} epochs)")
    return fig


def plot_bench(rows: list[dict]):
    """Stacked per-phase milliseconds per step, one bar per (method, mode)."""
    from matplotlib.figure import Figure
    rows = [r for r in rows if isinstance(r.get("breakdown_ms"), dict)]
    if not rows:
        return None
    phases = list(dict.fromkeys(p for r in rows for p in r["breakdown_ms"]
                                if p not in ("forward_loss",)))  # forward_loss = network_forward + loss
    fig = Figure(figsize=(max(5.0, 0.9 * len(rows) + 2.5), 3.8), layout="constrained")
    ax = fig.subplots()
    bottom = np.zeros(len(rows))
    for i, phase in enumerate(phases):
        values = np.array([r["breakdown_ms"].get(phase, 0.0) for r in rows])
        ax.bar(np.arange(len(rows)), values, bottom=bottom, color=f"C{i}", label=phase)
        bottom += values
    ax.set_xticks(np.arange(len(rows)), [f"{r['method']}\n{r['mode']}" for r in rows], fontsize=8)
    ax.set_ylabel("ms per step")
    fig.legend(loc="outside right center", fontsize=8, frameon=False)
    devices = sorted({str(r.get("device")) for r in rows})
    fig.suptitle(f"Training-step breakdown ({', '.join(devices)}, batch {rows[0].get('batch_size')})")
    return fig


def plot_curves(root: str | Path, keys=("loss", "cluster", "knn_monitor_top1", "lr")):
    """Training curves of every run dir under `root` that has a metrics.jsonl (e.g. OSESSL vs ReSA)."""
    root = Path(root)
    runs = {str(p.parent.relative_to(root)): p.parent for p in sorted(root.rglob("metrics.jsonl"))}
    if not runs:
        return None
    from .eval.curves import read_metrics
    present = [k for k in keys if any(k in r for d in runs.values() for r in read_metrics(d))]
    return plot_metrics(runs, present)
