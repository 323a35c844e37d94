"""One writer per run directory: an exclusive `flock` on <run_dir>/.lock, held while a run trains and evaluates.

The kernel drops the lock when its process dies (kill -9 included), so a stale lock never blocks a resume; the
file only names the last holder (pid, host, start time) for the error message. Under torchrun only rank 0 writes
the run directory and takes the lock. stdlib `fcntl` is enough here (the `filelock` package wraps the same call).
flock is advisory and, on some network file systems, local to one host: two hosts sharing an NFS run dir are not
protected where the file system does not forward flock.
"""
from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path

LOCK_NAME = ".lock"
_HELD: dict[str, int] = {}  # resolved run dir -> open fd; one process may reopen its own run (notebooks, tests)


class RunDirLockedError(RuntimeError):
    pass


def acquire(run_dir: Path) -> None:
    key = str(Path(run_dir).resolve())
    if key in _HELD:
        return
    path = Path(run_dir) / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _read_holder(fd)
        os.close(fd)
        raise RunDirLockedError(f"run dir {run_dir} is in use by {holder}; wait for it to finish, stop it, or use "
                                "another --run-dir") from None
    os.ftruncate(fd, 0)
    os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                             "since": time.strftime("%Y-%m-%d %H:%M:%S")}).encode())
    _HELD[key] = fd


def release(run_dir: Path) -> None:
    fd = _HELD.pop(str(Path(run_dir).resolve()), None)
    if fd is not None:
        os.close(fd)  # closing the descriptor drops the flock


def _read_holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0) or b"{}")
        return f"pid {info['pid']} on host {info['host']} (since {info['since']})"
    except (OSError, ValueError, KeyError):
        return "another process"
