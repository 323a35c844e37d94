"""The notebooks' figures, as bare matplotlib Figures (no pyplot state): sweeps beside the paper, grouped bars,
and Figure 4's exemplar grid."""
from __future__ import annotations

import numpy as np
import torch

from .sweeps import MEASURED


def plot_sweep(rows: list[dict], title: str, columns=MEASURED):
    """One panel per dataset, one shared y-axis: a dot per (row, column), measured filled and the paper's hollow
    beside it. Rows are categories, so no line joins them; a short or smoke run simply sits below the paper."""
    from matplotlib.figure import Figure
    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    per_panel = max((sum(r["dataset"] == ds for r in rows) for ds in datasets), default=1)
    fig = Figure(figsize=(max(4.0, 0.55 * per_panel * len(columns) + 2.5) * max(len(datasets), 1), 4.0),
                 layout="constrained")
    axes = fig.subplots(1, max(len(datasets), 1), squeeze=False, sharey=True)[0]
    width = 0.8 / max(len(columns), 1)
    for ax, ds in zip(axes, datasets):
        sub = [r for r in rows if r["dataset"] == ds]
        x = np.arange(len(sub))
        for i, col in enumerate(columns):
            off = x + (i - (len(columns) - 1) / 2) * width
            measured = [r.get(col) if isinstance(r.get(col), (int, float)) else np.nan for r in sub]
            paper = [r.get(f"paper_{col}") if isinstance(r.get(f"paper_{col}"), (int, float)) else np.nan
                     for r in sub]
            ax.plot(off - width / 5, measured, "o", color=f"C{i}", label=f"measured {col}")
            if not np.all(np.isnan(paper)):
                ax.plot(off + width / 5, paper, "D", mfc="none", color=f"C{i}", label=f"paper {col}")
        ax.set_xticks(x, [str(r.get("row", r.get("method"))) for r in sub], rotation=30, ha="right")
        ax.set_xlim(-0.6, len(sub) - 0.4)
        ax.grid(axis="y", alpha=0.3)
        ax.set_title(ds)
    axes[0].set_ylabel("top-1 (%)")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=max(len(labels), 1), fontsize=8, frameon=False)
    fig.suptitle(title)
    return fig


def plot_bars(rows: list[dict], label: str | tuple[str, ...], panels: dict[str, list[str]], title: str):
    """Grouped bars: one panel per {panel title: [columns]}, one group per row (labelled by `label` key(s)).
    Non-numeric values (e.g. "n/a") are left out."""
    from matplotlib.figure import Figure
    keys = (label,) if isinstance(label, str) else tuple(label)
    names = [" / ".join(str(r.get(k)) for k in keys) for r in rows]
    fig = Figure(figsize=(max(3.5, 0.5 * len(rows) * max(map(len, panels.values())) + 2) * len(panels), 3.6),
                 layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    x = np.arange(len(rows))
    for ax, (panel, columns) in zip(axes, panels.items()):
        width = 0.8 / len(columns)
        for i, col in enumerate(columns):
            values = [r[col] if isinstance(r.get(col), (int, float)) else np.nan for r in rows]
            ax.bar(x + (i - (len(columns) - 1) / 2) * width, values, width, label=col)
        ax.set_xticks(x, names, rotation=20, ha="right")
        ax.set_title(panel)
        if len(columns) > 1:
            ax.legend(fontsize=7)
    fig.suptitle(title)
    return fig


def plot_exemplar_grid(exemplars: torch.Tensor, neighbours: torch.Tensor, class_names: list[str],
                       neighbour_labels: torch.Tensor | None = None, title: str | None = None):
    """Rows = classes: the exemplar (red border) then its neighbours (green border; a neighbour whose true
    class differs gets its class name in red underneath). Images are uint8 [C,3,H,W] and [C,k,3,H,W]."""
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle
    n_cls, k = neighbours.shape[:2]
    fig = Figure(figsize=(1.1 * (k + 1) + 1.5, 1.25 * n_cls), layout="constrained")
    axes = fig.subplots(n_cls, k + 1, squeeze=False)
    for c in range(n_cls):
        for j in range(k + 1):
            ax = axes[c, j]
            img = exemplars[c] if j == 0 else neighbours[c, j - 1]
            ax.imshow(img.permute(1, 2, 0).numpy(), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            h, w = img.shape[-2:]
            color = "red" if j == 0 else "green"
            ax.add_patch(Rectangle((-0.5, -0.5), w, h, fill=False, edgecolor=color, linewidth=4))
            for s in ax.spines.values():
                s.set_visible(False)
            if j == 0:
                ax.set_ylabel(class_names[c], rotation=0, ha="right", va="center", fontsize=8)
            elif neighbour_labels is not None and int(neighbour_labels[c, j - 1]) != c:
                ax.set_xlabel(class_names[int(neighbour_labels[c, j - 1])], color="red", fontsize=6)
    if title:
        fig.suptitle(title)
    return fig
