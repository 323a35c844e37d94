"""The ablation tables' sweeps: one training per (dataset, row), the paper's numbers beside each, and the rows
that summarise or complete them (mean/std over seeds, the paper's rows for methods not built here)."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterable

import numpy as np

from . import datasets as data  # looked up at call time: one place to stub it in tests
from .paper import PAPER, with_paper
from .registry import methods, param_value

if TYPE_CHECKING:
    from .runner import Experiment

MEASURED = ("linear_top1", "knn_top1")
NOT_IMPLEMENTED = "not implemented"


def sweep(exp: Experiment, rows: list[dict], datasets: Iterable[str], table_name: str,
          extra_cols: Iterable[str] = (), **common) -> tuple[list[dict], list[dict]]:
    """Train and evaluate one run per (dataset, row); return (result rows, skipped datasets).

    A row is {"label": str, "method": name (default "osessl"), "method_args": {...}, **TrainConfig overrides};
    `common` are TrainConfig overrides for every row. The label is the paper's row name, so paper_* and diff_*
    columns are added where the paper reports that row. Datasets without data are skipped with a message (and
    listed in the second return value). `extra_cols` copies those row/method parameters into the result rows.
    Each result row holds the TrainConfig it trained with ("config", its run_dir included): a notebook's
    file-level config is built without a dataset, so only the rows say which data each run used.
    """
    out, skipped = [], []
    for ds in datasets:
        ok, info = data.dataset_available(ds, exp.data_root)
        if not ok:
            print(f"SKIPPED {ds}: {info}")
            skipped.append({"dataset": ds, "reason": info})
            continue
        for row in rows:
            row = dict(row)
            label, method = row.pop("label"), row.pop("method", "osessl")
            cfg = exp.config(method, row.pop("method_args", None), dataset=ds, **{**common, **row})
            result, ev = exp.run(cfg, label=f"{ds}-{label}")
            rec = {"dataset": ds, "row": label, "method": method, "seed": cfg.seed,
                   **{k: ev[k] for k in MEASURED if k in ev},
                   **{c: param_value(cfg, c) for c in extra_cols},
                   "final_loss": ev["final_loss"], "steps": result.step, "epochs": cfg.epochs,
                   "train_seconds": ev["wall_seconds"], "method_args": cfg.method_args,
                   "config": {**cfg.to_dict(), "run_dir": ev["run_dir"]}}  # what this row trained: its dataset
            out.append(with_paper(rec, table_name, ds, label))
            print(f"{ds:9s} {label:22s} " + "  ".join(f"{k} {rec[k]:6.2f}" for k in MEASURED if k in rec))
    return out, skipped


def not_implemented_rows(table_name: str, results: list[dict], columns: Iterable[str] = MEASURED) -> list[dict]:
    """Rows for the methods the paper reports in `table_name` that are not registered here (in Table 1, CW-RGP and
    INTL, whose papers this project does not have): the paper's numbers as paper_* columns and each measured column
    marked "not implemented", for every dataset that `results` (a sweep's rows) covers."""
    registered = set(methods())
    out = []
    for ds in dict.fromkeys(r["dataset"] for r in results):
        for method, ref in PAPER[table_name].get(ds, {}).items():
            if method not in registered:
                out.append({"dataset": ds, "row": method, "method": method, **{c: NOT_IMPLEMENTED for c in columns},
                            **{f"paper_{c}": v for c, v in ref.items()}})
    return out


def mean_std(rows: list[dict], columns=MEASURED) -> list[dict]:
    """Per dataset: mean and sample std (ddof=1) of each column over the rows (Table 9's seeds), with the same
    statistics of the paper's per-row numbers where the rows carry paper_* columns."""
    out = []
    for ds in dict.fromkeys(r["dataset"] for r in rows):
        sub = [r for r in rows if r["dataset"] == ds]
        rec: dict[str, Any] = {"dataset": ds, "n": len(sub)}
        for col in columns:
            for prefix in ("", "paper_"):
                vals = [r[prefix + col] for r in sub if isinstance(r.get(prefix + col), (int, float))]
                if vals:
                    rec[f"{prefix}{col}_mean"] = round(float(np.mean(vals)), 4)
                    rec[f"{prefix}{col}_std"] = round(float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0, 4)
        out.append(rec)
    return out


def sweep_configs(rows: list[dict]) -> dict[str, dict]:
    """The result file's `config`: each sweep row's own TrainConfig, keyed "<dataset>/<row>" (so CIFAR-100 rows
    say cifar100)."""
    return {f"{r['dataset']}/{r.get('row', r.get('method'))}": r["config"] for r in rows if "config" in r}
