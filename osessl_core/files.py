"""Atomic files: a crash while writing never leaves a truncated file where the last good one was.

Every file the project writes (checkpoints, run-dir JSON, result files, the dataset cache, exemplars) goes
through `atomic_write_bytes`: a temp file beside the target, fsync, then rename. The temp file gets the mode a
plain `open()` would (0666 minus the umask): `mkstemp` creates 0600 files, which collaborators on a shared file
system could not read. A disk-full error names the path. Temp files left by a killed process are removed by
`remove_stale_temp_files` at the next start (under the run-directory lock).
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

TEMP_SUFFIX = ".tmp"


class DiskFullError(OSError):
    pass


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _is_disk_full(e: BaseException, folder: Path) -> bool:
    if getattr(e, "errno", None) in (errno.ENOSPC, errno.EDQUOT) or "No space left" in str(e):
        return True
    # torch.save reports a full disk as a RuntimeError from its zip writer ("file write failed"), without errno.
    try:
        return isinstance(e, RuntimeError) and shutil.disk_usage(folder).free < (16 << 20)
    except OSError:
        return False


def atomic_write_bytes(path: Path, write, keep_previous: Path | None = None) -> None:
    """Write `path` through `write(file)` atomically. With `keep_previous`, an existing `path` is first moved
    there (the rename order means a crash at any point leaves `path` or `keep_previous` complete)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX)
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        if keep_previous is not None and path.exists():
            os.replace(path, keep_previous)
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(e, Exception) and _is_disk_full(e, path.parent):
            raise DiskFullError(errno.ENOSPC, f"no space left on device while writing {path}") from e
        raise


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, lambda f: f.write((json.dumps(obj, indent=2, sort_keys=True) + "\n").encode()))


def atomic_write_json_lines(path: Path, rows: list[dict]) -> None:
    atomic_write_bytes(path, lambda f: f.write("".join(json.dumps(r) + "\n" for r in rows).encode()))


def remove_stale_temp_files(folder: Path) -> list[Path]:
    """Delete the `.<name>.*.tmp` files that a killed writer left in `folder`; return them."""
    stale = [p for p in Path(folder).glob(f".*{TEMP_SUFFIX}") if p.is_file()]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale
