"""What a notebook shows: rounded tables, inline figures, and no known-noisy warnings."""
from __future__ import annotations

import io


def table(rows: list[dict], columns: list[str] | None = None, digits: int = 2):
    """A pandas DataFrame of `rows` for display, numbers rounded (also in columns that mix numbers and text, such
    as "not implemented")."""
    import pandas as pd
    df = pd.DataFrame(rows)
    if columns is not None:
        df = df[[c for c in columns if c in df.columns]]
    return df.round(digits).map(lambda v: round(v, digits) if isinstance(v, float) else v)


def _figure_png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return buf.getvalue()


def enable_inline_figures() -> None:
    """Make `display(fig)` (and a figure as a cell's last value) render a PNG in Jupyter, papermill and nbconvert.

    The plot helpers build bare `matplotlib.figure.Figure`s without pyplot (no global figure list, no backend
    state), so the inline backend's formatter, which pyplot installs on import, is never registered: IPython
    would print `<Figure size ...>`. Registering the PNG formatter for Figure here is what matplotlib-inline does,
    without pyplot. Outside IPython this does nothing."""
    try:
        from IPython import get_ipython
    except ImportError:
        return
    shell = get_ipython()
    if shell is None:
        return
    from matplotlib.figure import Figure
    shell.display_formatter.formatters["image/png"].for_type(Figure, _figure_png)


def setup_quiet() -> None:
    import logging
    import warnings
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", message=".*n_jobs value.*")  # UMAP with a fixed random_state
    warnings.filterwarnings("ignore", message=".*omp_set_nested.*")
    logging.getLogger("numba").setLevel(logging.WARNING)
