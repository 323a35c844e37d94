"""A run directory: what a run writes, where, and how nothing in it is lost or poisoned.

Layout: config.json (the config, plus "resolved": what it became for the data), provenance.json, the method's own
run files (e.g. exemplars.json, each with the seed, dataset and subset it was drawn from), metrics.jsonl (one line
per log interval), checkpoint.pt (atomic, latest), checkpoint.prev.pt (the last confirmed checkpoint, while the
latest is unconfirmed), eval.json (after training), config_changes.jsonl (fields changed on a resume with
allow_config_change), .lock (held while a process writes; run_lock.py).

A checkpoint becomes "confirmed" once the loss of the step after it is finite; until then the previous one is
kept, so a non-finite loss can roll back to weights that are known to be good. Only rank 0 writes; other ranks
and read-only openers (lock=False) write nothing.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from ..errors import RunDirError
from ..eval.curves import read_metrics
from ..files import atomic_write_json, atomic_write_json_lines, remove_stale_temp_files
from . import run_lock
from .checkpoint import load_checkpoint, save_checkpoint


class RunDir:
    def __init__(self, path: str | Path, writer: bool):
        """writer: this process writes the directory (rank 0 of a training run); else it only reads."""
        self.path = Path(path)
        self.writer = writer
        self.confirmed = True

    checkpoint = property(lambda self: self.path / "checkpoint.pt")
    previous_checkpoint = property(lambda self: self.path / "checkpoint.prev.pt")
    metrics = property(lambda self: self.path / "metrics.jsonl")

    # ---- ownership ---------------------------------------------------------------------------------------------
    def claim(self) -> None:
        """Create the directory, take its lock, and clear temp files a killed writer left (safe under the lock)."""
        if not self.writer:
            return
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            run_lock.acquire(self.path)
            probe = self.path / ".write-test"
            probe.touch()
            probe.unlink()
        except OSError as e:
            raise RunDirError(f"cannot use run dir {self.path}: {e.strerror or e}") from None
        remove_stale_temp_files(self.path)

    def release(self) -> None:
        if self.writer:
            run_lock.release(self.path)

    def recover(self) -> None:
        """After a kill between the two renames of a save, the kept previous checkpoint is the latest."""
        if self.writer and not self.checkpoint.exists() and self.previous_checkpoint.exists():
            os.replace(self.previous_checkpoint, self.checkpoint)
        self.confirmed = not self.previous_checkpoint.exists()

    # ---- files written once, at the start ---------------------------------------------------------------------
    def start(self, config: dict[str, Any], provenance: dict[str, Any], run_files: dict[str, dict[str, Any]],
              drawn_from: dict[str, Any]) -> None:
        """A fresh run: config, provenance, the method's run files (stamped with `drawn_from`), no metrics."""
        if not self.writer:
            return
        self.write_config(config)
        atomic_write_json(self.path / "provenance.json", provenance)
        for name, content in run_files.items():
            atomic_write_json(self.path / name, {**content, **drawn_from})
        self.metrics.unlink(missing_ok=True)

    def write_config(self, config: dict[str, Any]) -> None:
        if self.writer:
            atomic_write_json(self.path / "config.json", config)

    def record_config_change(self, step: int, changes: dict[str, dict[str, Any]], config: dict[str, Any]) -> None:
        """A resume that changed training fields: appended to config_changes.jsonl, and config.json rewritten."""
        if not self.writer:
            return
        with open(self.path / "config_changes.jsonl", "a") as f:
            f.write(json.dumps({"step": step, "time": time.strftime("%Y-%m-%d %H:%M:%S"), "changes": changes}) + "\n")
        self.write_config(config)

    # ---- metrics -----------------------------------------------------------------------------------------------
    def trim_metrics(self, step: int) -> None:
        """Drop metric lines logged after the checkpoint we resume from (they will be logged again), and a
        partial last line left by a crash in the middle of a write."""
        if self.writer and self.metrics.exists():
            atomic_write_json_lines(self.metrics, [r for r in read_metrics(self.path) if r["step"] <= step])

    def append_metrics(self, row: dict[str, Any]) -> None:
        if self.writer:
            with open(self.metrics, "a") as f:
                f.write(json.dumps(row) + "\n")

    # ---- checkpoints -------------------------------------------------------------------------------------------
    def save(self, state: dict[str, Any], finished: bool) -> None:
        """Write checkpoint.pt, keeping a confirmed one as checkpoint.prev.pt until the new one is confirmed."""
        if self.writer:
            keep = self.previous_checkpoint if self.confirmed else None
            save_checkpoint(self.checkpoint, state, keep_previous=keep)
        self.confirmed = False
        if finished:  # no later step to confirm it, and nothing to resume
            self.confirm()

    def confirm(self) -> None:
        """The loss of a step after checkpoint.pt was finite: it is good; the kept previous one can go."""
        if not self.confirmed and self.writer:
            self.previous_checkpoint.unlink(missing_ok=True)
        self.confirmed = True

    def roll_back(self) -> int | None:
        """Discard an unconfirmed checkpoint.pt (its weights led to non-finite values); the step left, if any."""
        if self.confirmed or not self.writer:
            step = load_checkpoint(self.checkpoint)["step"] if self.checkpoint.exists() else None
        elif self.previous_checkpoint.exists():
            os.replace(self.previous_checkpoint, self.checkpoint)
            step = load_checkpoint(self.checkpoint)["step"]
        else:
            self.checkpoint.unlink(missing_ok=True)
            step = None
        self.confirmed = True
        return step
