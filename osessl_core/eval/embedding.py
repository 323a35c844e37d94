"""2-D embeddings (t-SNE / UMAP) of frozen features and side-by-side scatter plots."""
from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.lines import Line2D


def embed_2d(features, method: str = "tsne", seed: int = 0, max_iter: int | None = None,
             n_neighbors: int = 15, min_dist: float = 0.1) -> np.ndarray:
    """Project features [N, D] to [N, 2] with t-SNE (PCA init) or UMAP; deterministic for a given seed.

    max_iter: t-SNE optimisation iterations (sklearn default 1000, minimum 250) or UMAP n_epochs.
    """
    X = features.detach().cpu().float().numpy() if isinstance(features, torch.Tensor) else np.asarray(features)
    X = X.astype(np.float32, copy=False)
    if method == "tsne":
        from sklearn.manifold import TSNE

        kw = {} if max_iter is None else {"max_iter": max_iter}
        # Perplexity must stay below N; only matters for tiny sets.
        tsne = TSNE(n_components=2, init="pca", random_state=seed, perplexity=min(30.0, (len(X) - 1) / 3), **kw)
        return tsne.fit_transform(X)
    if method == "umap":
        import umap  # lazy: importing umap (numba) takes seconds

        # A fixed random_state forces single-threaded UMAP anyway; say so explicitly to avoid its warning.
        reducer = umap.UMAP(n_components=2, n_neighbors=n_neighbors, min_dist=min_dist, random_state=seed,
                            n_epochs=max_iter, n_jobs=1)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*n_jobs.*")
            return np.asarray(reducer.fit_transform(X))
    raise ValueError(f"method must be 'tsne' or 'umap', got {method!r}")


def plot_embeddings(panels: dict, class_names: list, path=None, title: str | None = None,
                    point_size: float = 2, ncols: int | None = None) -> Figure:
    """Scatter each {name: (xy [N, 2], labels [N])} panel side by side (`ncols` per row, default 3), one legend.

    Builds a bare matplotlib Figure (no pyplot), so the global backend and pyplot's figure list are left
    alone; notebooks still display the returned figure. With path, saves path.png and path.pdf.
    """
    import seaborn as sns  # lazy, like sklearn/umap: keeps `import osessl_core.eval` light

    if not panels:
        raise ValueError("panels is empty")
    ncols = min(len(panels), ncols or 3)
    nrows = math.ceil(len(panels) / ncols)
    colors = np.asarray(sns.color_palette("deep" if len(class_names) <= 10 else "husl", len(class_names)))

    fig = Figure(figsize=(4.5 * ncols + 1.8, 4.5 * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, (name, (xy, labels)) in zip(axes, panels.items()):
        xy, labels = np.asarray(xy), np.asarray(labels).astype(int)
        if labels.size and (labels.min() < 0 or labels.max() >= len(class_names)):
            raise ValueError(f"panel {name!r} has labels outside [0, {len(class_names)})")
        # Rasterised points keep the PDF small for tens of thousands of points.
        ax.scatter(xy[:, 0], xy[:, 1], c=colors[labels], s=point_size, linewidths=0, rasterized=True)
        ax.set_title(name)
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in axes[len(panels):]:
        ax.set_axis_off()

    handles = [Line2D([], [], marker="o", linestyle="", color=c, markersize=6) for c in colors]
    fig.legend(handles, class_names, loc="outside right center", frameon=False)
    if title:
        fig.suptitle(title)
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path.with_suffix(".png"), dpi=200, bbox_inches="tight")
        fig.savefig(path.with_suffix(".pdf"), bbox_inches="tight")
    return fig
