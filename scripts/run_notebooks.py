#!/usr/bin/env python
"""Run the paper notebooks headless with papermill, one output folder per notebook.

    python scripts/run_notebooks.py --smoke                 # every notebook, tiny CPU budget (build/smoke/<nb>/)
    python scripts/run_notebooks.py                         # every notebook, paper budget (needs a CUDA GPU)
    python scripts/run_notebooks.py table7 figure3 -p EPOCHS=100
    python scripts/run_notebooks.py table1 -p table1.METHODS='[resa]' --allow-cpu
    python scripts/run_notebooks.py --smoke --prepare-only build/nb   # inject parameters only (for nbval)
    python scripts/run_notebooks.py --list                  # notebooks and their parameters

Each notebook's parameters are read from its `parameters` cell (papermill.inspect_notebook); a parameter the
notebook does not declare is an error, not papermill's silent warning. `-p NAME=VALUE` (YAML value) applies to
every selected notebook, which must all declare NAME; `-p NOTEBOOK.NAME=VALUE` applies to one notebook.
Outputs: <out-root>/<notebook>/ (the notebook's OUT_DIR: results, figures, run directories) plus the executed
copy <out-root>/<notebook>/<notebook>.ipynb. The out-root is results/ for full runs and build/smoke/ with --smoke,
so smoke numbers never land beside real results.

Without --smoke, a machine without CUDA is refused (the paper budget is days of CPU time) unless --allow-cpu.
"""
from __future__ import annotations

import argparse
import difflib
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = REPO / "notebooks"
KERNEL = "python3"


def ipc_kernel_manager():
    """A kernel manager that talks to the kernel over Unix sockets in a private temp dir instead of TCP on
    localhost. ipykernel warns "Kernel is running over TCP without encryption" for every TCP kernel; with no TCP
    port there is nothing to eavesdrop on (messages are HMAC-signed either way), and no warning."""
    import atexit
    import shutil
    import tempfile

    from jupyter_client.manager import KernelManager

    socket_dir = tempfile.mkdtemp(prefix="osessl-kernel-")
    atexit.register(shutil.rmtree, socket_dir, True)

    class IPCKernelManager(KernelManager):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.transport = "ipc"
            self.ip = str(Path(socket_dir) / "kernel")

    return IPCKernelManager


def notebook_paths(names: list[str]) -> list[Path]:
    available = {p.stem: p for p in sorted(NOTEBOOKS.glob("*.ipynb"))}
    if not names:
        return list(available.values())
    unknown = [n for n in names if n.removesuffix(".ipynb") not in available]
    if unknown:
        raise SystemExit(f"error: unknown notebook(s) {unknown}; available: {sorted(available)}")
    return [available[n.removesuffix(".ipynb")] for n in names]


def declared_parameters(path: Path) -> dict[str, dict]:
    import papermill as pm
    params = pm.inspect_notebook(str(path))
    if not params:
        raise SystemExit(f"error: {path.name} has no cell tagged 'parameters'")
    return params


def parse_overrides(items: list[str], names: list[str]) -> tuple[dict, dict[str, dict]]:
    """-p values -> (for every notebook, {notebook: {...}}); values are YAML, like papermill's -y/-p."""
    common: dict = {}
    per_nb: dict[str, dict] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"error: -p expects NAME=VALUE or NOTEBOOK.NAME=VALUE, got {item!r}")
        value = yaml.safe_load(raw) if raw.strip() else ""
        nb, dot, name = key.rpartition(".")
        if name == "SMOKE":
            raise SystemExit("error: set SMOKE with --smoke (it also picks the output root), not with -p")
        if dot:
            if nb not in names:
                raise SystemExit(f"error: -p {item!r} names notebook {nb!r}, which is not selected ({names})")
            per_nb.setdefault(nb, {})[name] = value
        else:
            common[key] = value
    return common, per_nb


def validate(nb: str, params: dict, declared: dict[str, dict]) -> None:
    unknown = sorted(set(params) - set(declared))
    if unknown:
        hints = []
        for u in unknown:
            close = difflib.get_close_matches(u, declared, n=1)
            hints.append(f"{u}" + (f" (did you mean {close[0]}?)" if close else ""))
        raise SystemExit(f"error: {nb} does not declare parameter(s) {', '.join(hints)}; "
                         f"it declares: {', '.join(sorted(declared))}")


def build_plan(paths: list[Path], smoke: bool, out_root: Path, items: list[str]) -> list[tuple[Path, dict, Path]]:
    names = [p.stem for p in paths]
    common, per_nb = parse_overrides(items, names)
    plan = []
    for path in paths:
        declared = declared_parameters(path)
        out_dir = out_root / path.stem
        params = {"SMOKE": smoke, "OUT_DIR": str(out_dir), **common, **per_nb.get(path.stem, {})}
        validate(path.stem, params, declared)
        plan.append((path, params, out_dir))
    return plan


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("notebooks", nargs="*", help="notebook names (default: all in notebooks/)")
    ap.add_argument("--smoke", action="store_true", help="SMOKE=True: tiny CPU budget on real CIFAR data")
    ap.add_argument("--allow-cpu", action="store_true", help="run the full budget even without CUDA")
    ap.add_argument("-p", "--param", action="append", default=[], metavar="[NB.]NAME=VALUE",
                    help="set a parameter (YAML value); repeatable")
    ap.add_argument("--out-root", type=Path, default=None,
                    help="parent of the per-notebook output folders (default: results/, or build/smoke/ with --smoke)")
    ap.add_argument("--prepare-only", type=Path, metavar="DIR", default=None,
                    help="only write DIR/<nb>.ipynb with the parameters injected (e.g. for nbval); run nothing")
    ap.add_argument("--timeout", type=int, default=None, help="per-cell execution timeout in seconds")
    ap.add_argument("--keep-going", action="store_true", help="run the remaining notebooks after a failure")
    ap.add_argument("--list", action="store_true", help="list the notebooks and their parameters, then exit")
    args = ap.parse_args(argv)

    paths = notebook_paths(args.notebooks)
    if args.list:
        for path in paths:
            print(path.stem)
            for name, p in declared_parameters(path).items():
                print(f"    {name} = {p['default']}" + (f"    {p['help']}" if p.get("help") else ""))
        return 0

    out_root = args.out_root or (REPO / "build" / "smoke" if args.smoke else REPO / "results")
    out_root = out_root if out_root.is_absolute() else Path.cwd() / out_root
    plan = build_plan(paths, args.smoke, out_root, args.param)

    import papermill as pm
    if args.prepare_only:
        dest = args.prepare_only if args.prepare_only.is_absolute() else Path.cwd() / args.prepare_only
        dest.mkdir(parents=True, exist_ok=True)
        for path, params, _ in plan:
            pm.execute_notebook(str(path), str(dest / path.name), parameters=params, prepare_only=True,
                                kernel_name=KERNEL, progress_bar=False)
            print(f"prepared {dest / path.name}")
        return 0

    if not args.smoke and not args.allow_cpu:
        import torch
        if not torch.cuda.is_available():
            raise SystemExit(
                "error: no CUDA GPU here. The full budget is the paper's (1000-epoch ResNet-18 runs, several per "
                "notebook): days of CPU time. Use --smoke to check the pipeline, run on a GPU machine, or pass "
                "--allow-cpu (with smaller budgets, e.g. -p EPOCHS=10) to run it on this CPU anyway.")

    if not args.smoke and args.allow_cpu:
        import torch
        if not torch.cuda.is_available():  # the notebooks refuse a full budget on an implicit CPU device
            for _, params, _ in plan:
                params.setdefault("DEVICE", "cpu")

    failures, timings = [], []
    kernel_manager = ipc_kernel_manager()
    for path, params, out_dir in plan:
        out_dir.mkdir(parents=True, exist_ok=True)
        executed = out_dir / path.name
        shown = " ".join(f"{k}={v!r}" for k, v in params.items())
        print(f"[{path.stem}] {shown}", flush=True)
        t0 = time.perf_counter()
        try:
            pm.execute_notebook(str(path), str(executed), parameters=params, kernel_name=KERNEL, cwd=str(NOTEBOOKS),
                                progress_bar=False, execution_timeout=args.timeout,
                                kernel_manager_class=kernel_manager)
            status = "ok"
        except Exception as e:  # papermill raises PapermillExecutionError with the failing cell's traceback
            status = "FAILED"
            failures.append(path.stem)
            print(f"[{path.stem}] FAILED: {type(e).__name__}: {str(e).strip().splitlines()[-1] if str(e).strip() else ''}"
                  f"\n    executed notebook with the error: {executed}", file=sys.stderr, flush=True)
        seconds = time.perf_counter() - t0
        timings.append((path.stem, status, seconds))
        print(f"[{path.stem}] {status} in {seconds:.1f} s -> {out_dir}", flush=True)
        if failures and not args.keep_going:
            break
    print("\nnotebook               status   seconds")
    for name, status, seconds in timings:
        print(f"{name:22s} {status:8s} {seconds:7.1f}")
    print(f"total {sum(t for *_, t in timings):.1f} s")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
