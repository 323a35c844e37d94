"""The paper's reported numbers, read from paper_numbers.json: one entry per number, with the table, dataset,
row and column it comes from. Numbers are data, not code, so correcting one is a one-line diff to the file."""
from __future__ import annotations

import json
from pathlib import Path

PAPER_NUMBERS = Path(__file__).with_name("paper_numbers.json")
ENTRY_KEYS = ("table", "dataset", "row", "column", "value")


def paper_numbers(path: str | Path = PAPER_NUMBERS) -> list[dict]:
    """The file's entries, in its order; an entry without all of ENTRY_KEYS, or with a non-numeric value, is an
    error (a number whose place in the paper is unknown cannot be compared with anything)."""
    entries = json.loads(Path(path).read_text())["numbers"]
    for i, e in enumerate(entries):
        missing = [k for k in ENTRY_KEYS if k not in e]
        if missing or not isinstance(e["value"], (int, float)) or isinstance(e["value"], bool):
            raise ValueError(f"{path}: entry {i} ({e}) lacks {missing or 'a numeric value'}")
    return entries


def _nested(entries: list[dict]) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for e in entries:
        out.setdefault(e["table"], {}).setdefault(e["dataset"], {}).setdefault(e["row"], {})[e["column"]] = e["value"]
    return out


# table -> dataset -> row -> {column: value}, in the file's order (the paper's row order, used for display).
PAPER: dict[str, dict] = _nested(paper_numbers())


def paper_row(table_name: str, dataset: str, row: str) -> dict | None:
    """{column: value} the paper reports for this row of this table on this dataset; None if it reports none."""
    ref = PAPER.get(table_name, {}).get(dataset, {}).get(row)
    return dict(ref) if ref is not None else None


def paper_rows(table_name: str) -> list[str]:
    """The row names of `table_name` over all its datasets, in the paper's order."""
    return list(dict.fromkeys(r for ds in PAPER.get(table_name, {}).values() for r in ds))


def with_paper(record: dict, table_name: str, dataset: str, row: str) -> dict:
    """Add paper_<col> and diff_<col> (measured - paper) for every column the paper reports for this row."""
    ref = paper_row(table_name, dataset, row) or {}
    out = dict(record)
    for col, value in ref.items():
        out[f"paper_{col}"] = value
        if record.get(col) is not None:
            out[f"diff_{col}"] = round(record[col] - value, 4)
    return out
