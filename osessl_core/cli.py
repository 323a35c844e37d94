"""Command line: `python -m osessl_core {train,eval,quickstart,methods}` (also installed as `osessl`).

Every TrainConfig field is a flag (`--batch-size 256`, `--no-zero-pad`, ...); method parameters go through
`-m name=value` and are checked against the method's parameter dataclass. Resuming a run dir starts from its
config.json: only the flags given change it (a changed training field needs --allow-config-change).

Errors a user can fix are one line on stderr: exit 2 for usage errors (bad values, paths, data, an incompatible
or locked run dir), 1 for a run that failed (non-finite loss, disk full), 128 + the signal number when a signal
stopped training (after a checkpoint). A traceback means a bug (OSESSL_DEBUG=1 shows it for any error).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import types
import typing
from pathlib import Path

from .config import ConfigError, TrainConfig, field_comments


def _parse_value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _add_config_flags(p: argparse.ArgumentParser) -> None:
    hints = typing.get_type_hints(TrainConfig)
    comments = field_comments(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        if f.name == "method_args":
            continue
        flag = "--" + f.name.replace("_", "-")
        typ = hints[f.name]
        args = typing.get_args(typ)
        optional = typing.get_origin(typ) in (typing.Union, types.UnionType) and type(None) in args
        base = next(a for a in args if a is not type(None)) if optional else typ
        default = "unset" if f.default is None else f.default
        text = f"{comments.get(f.name, f.name.replace('_', ' '))} (default: {default})".replace("%", "%%")
        if base is bool:
            p.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                           help=text)
        elif typing.get_origin(base) is typing.Literal:
            p.add_argument(flag, dest=f.name, choices=typing.get_args(base), default=argparse.SUPPRESS, help=text)
        else:
            p.add_argument(flag, dest=f.name, type=base, default=argparse.SUPPRESS, metavar=base.__name__.upper(),
                           help=text)
    p.add_argument("-m", "--method-arg", dest="method_args", action="append", default=[], metavar="NAME=VALUE",
                   help="method parameter, e.g. -m k=8 -m tau_s=0.1 (see `methods`)")
    p.add_argument("--config", type=Path, help="JSON config file; flags override it")


def _read_json(path: Path, what: str) -> dict:
    try:
        values = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"cannot read {what} {path}: {getattr(e, 'strerror', None) or e}") from None
    if not isinstance(values, dict):
        raise ConfigError(f"{what} {path} must hold a JSON object")
    return values


def config_from_args(ns: argparse.Namespace) -> TrainConfig:
    run_dir = Path(getattr(ns, "run_dir", TrainConfig.run_dir))
    saved = run_dir / "config.json"
    resuming = getattr(ns, "resume", True) and (run_dir / "checkpoint.pt").exists() and saved.exists()
    # A resume keeps the run's own settings, except the limits of one invocation.
    per_invocation = {"max_steps", "time_limit", "resume", "allow_config_change", "run_dir"}
    values = ({k: v for k, v in _read_json(saved, "run config").items() if k not in per_invocation}
              if resuming else {})
    if getattr(ns, "config", None):
        values.update(_read_json(ns.config, "--config file"))
    method_args = dict(values.pop("method_args", {}))
    for item in ns.method_args:
        if "=" not in item:
            raise ConfigError(f"-m expects NAME=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        method_args[k.strip()] = _parse_value(v)
    skip = {"command", "config", "method_args", "func"}
    values.update({k: v for k, v in vars(ns).items() if k not in skip})
    if values.get("recipe") and not resuming:  # the preset first; --config and flags override it
        from .recipes import recipe_config
        return recipe_config(values.pop("recipe"), **values, method_args=method_args)
    return TrainConfig.from_dict({**values, "method_args": method_args})


def cmd_train(ns) -> int:
    from . import distributed
    from .engine import train
    cfg = config_from_args(ns)
    distributed.init_from_env()  # under torchrun: one process per GPU (NCCL) or per CPU worker (gloo)
    try:
        result = train(cfg)
    finally:
        if distributed.is_distributed():
            import torch.distributed as dist
            distributed.barrier()  # tearing down while a peer is still in a collective aborts it
            dist.destroy_process_group()
    if distributed.is_main_process():
        if result.eval:
            print(json.dumps(result.eval, indent=2))
        print(f"run directory: {result.run_dir}")
    return 0


def cmd_eval(ns) -> int:
    from .engine import load_run
    from .files import atomic_write_json
    from .engine.evaluate import evaluate_run
    from .provenance import provenance
    overrides = {"linear_epochs": ns.linear_epochs} if ns.linear_epochs else {}
    trainer = load_run(ns.run_dir, eval_knn=True, eval_linear=ns.linear, device=ns.device, progress=True,
                       **overrides)
    if ns.semisup is not None or ns.subset_file:
        from .engine.evaluate import evaluate_semisup
        out = evaluate_semisup(trainer.method, trainer.cfg, trainer.train_set, trainer.device, ns.semisup,
                               ns.subset_file, ns.semisup_epochs)
        name = "semisup.json"
    else:
        out = evaluate_run(trainer.method, trainer.cfg, trainer.train_set, trainer.device)
        name = "eval.json"
    atomic_write_json(Path(ns.run_dir) / name, {**out, "step": trainer.step, "epochs": trainer.cfg.epochs,
                                                "provenance": provenance(trainer.device)})
    print(json.dumps(out, indent=2))
    return 0


def cmd_quickstart(ns) -> int:
    from .quickstart import run_quickstart
    run_quickstart(out_dir=ns.out, data_root=ns.data_root, device=ns.device, epochs=ns.epochs)
    return 0


def _csv(text: str | None, cast=str):
    return tuple(cast(x) for x in text.split(",")) if text else None


def cmd_bench_imagenet(ns, device, tiny: bool) -> int:
    from .engine.bench import TINY_IMAGENET_BENCH, imagenet_config, run_imagenet_bench, tiny_imagenet_config
    cfg = tiny_imagenet_config(ns.device) if tiny else imagenet_config(ns.device)
    cfg = dataclasses.replace(cfg, **{k: v for k, v in (("batch_size", ns.batch_size), ("image_size", ns.image_size))
                                      if v})
    kw = dict(TINY_IMAGENET_BENCH) if tiny else {}
    given = {"archs": _csv(ns.arch), "workers": _csv(ns.workers, int), "backends": _csv(ns.backends),
             "methods": _csv(ns.methods), "warmup": ns.warmup, "steps": ns.steps, "classes": ns.classes,
             "data_root": ns.data_root}  # no --data-root: a generated ImageNet-shaped folder
    kw.update({k: v for k, v in given.items() if v is not None})
    out = ns.out or f"results/bench/imagenet-{'tiny-' if tiny else ''}{device.type}.json"
    import torch
    threads = torch.get_num_threads()
    if device.type == "cpu":  # OpenMP threads beside the loader's worker processes on the same cores thrash
        torch.set_num_threads(1)
    try:
        res = run_imagenet_bench(cfg, compile_on_cpu=ns.compile_on_cpu, out=out, **kw)
    finally:
        torch.set_num_threads(threads)  # main() may run in a caller's process (tests, notebooks)
    print(json.dumps(res["ratios"], indent=2))
    print(f"written: {out}")
    return 0


def cmd_bench(ns) -> int:
    from .engine.bench import MODES, run_bench, tiny_config
    from .engine.trainer import resolve_device
    from .paths import default_data_root
    device = resolve_device(ns.device)
    tiny = ns.tiny or device.type != "cuda"
    if ns.imagenet:
        return cmd_bench_imagenet(ns, device, tiny)
    data_root = ns.data_root or str(default_data_root())
    cfg = tiny_config(data_root, ns.device) if tiny else TrainConfig(data_root=data_root, device=ns.device)
    if ns.batch_size:
        cfg = dataclasses.replace(cfg, batch_size=ns.batch_size)
    out = ns.out or f"results/bench/bench-{'tiny-' if tiny else ''}{device.type}.json"
    modes = ns.modes.split(",") if ns.modes else tuple(MODES)
    unknown = sorted(set(modes) - set(MODES))
    if unknown:
        raise ConfigError(f"unknown mode(s) {unknown}; choose from {sorted(MODES)}")
    res = run_bench(cfg, methods=ns.methods.split(",") if ns.methods else None, modes=modes,
                    warmup=ns.warmup or (2 if tiny else 20),
                    steps=ns.steps or (3 if tiny else 50), compile_on_cpu=ns.compile_on_cpu, out=out)
    print(json.dumps(res["ratios"], indent=2))
    print(f"written: {out}")
    return 0


def cmd_export(ns) -> int:
    from .export import export_encoder
    card = export_encoder(ns.run_dir, ns.out)
    print(json.dumps({k: card[k] for k in ("weights", "sha256", "torchvision_constructor", "method", "knn_top1")},
                     indent=2))
    print(f"written: {ns.out} and {Path(ns.out).with_suffix('.json')}")
    return 0


def cmd_report(ns) -> int:
    from .experiments import table, write_results
    from .report import collect, plot_bench, plot_curves, plot_measured_vs_paper
    found = collect(ns.results)
    out = Path(ns.out)
    figures = {"measured_vs_paper": plot_measured_vs_paper(found["runs"]), "bench": plot_bench(found["bench"]),
               "curves": plot_curves(ns.results)}
    out.mkdir(parents=True, exist_ok=True)
    for name, fig in figures.items():
        if fig is not None:
            fig.savefig(out / f"{name}.png", dpi=120, bbox_inches="tight")
    write_results(out, "report", found["runs"], {"bench": found["bench"], "results_root": str(ns.results)})
    print(table(found["runs"], ["method", "dataset", "budget_epochs", "knn_top1", "paper_knn_top1", "linear_top1",
                                "paper_linear_top1", "device", "git_sha", "date"]).to_string(index=False))
    print(f"written: {out}/report.json, report.csv and the figures")
    return 0


def cmd_methods(ns) -> int:
    from .methods import METHODS
    for name, cls in METHODS.items():
        doc = (sys.modules[cls.__module__].__doc__ or "").strip().splitlines()
        print(f"{name}: {doc[0] if doc else cls.__name__}")
        hints, comments = typing.get_type_hints(cls.Params), field_comments(cls.Params)
        fields = dataclasses.fields(cls.Params)
        if not fields:
            print("    (no parameters of its own; see its docstring)")
        for f in fields:
            typ = getattr(hints[f.name], "__name__", None) or str(hints[f.name]).replace("typing.", "")
            setting = f"{f.name}={f.default!r}"
            print(f"    -m {setting:<24} {typ:<12} {comments.get(f.name, '')}".rstrip())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m osessl_core", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train", help="pretrain a method (resumes from --run-dir), then evaluate")
    _add_config_flags(p)
    p.set_defaults(func=cmd_train)
    p = sub.add_parser("eval", help="k-NN (and linear, or semi-supervised) evaluation of a run's checkpoint; "
                       "CIFAR protocols on device-resident data, ImageNet protocols on streamed folders")
    p.add_argument("--run-dir", required=True)
    p.add_argument("--linear", action="store_true", help="also the linear protocol (CIFAR probe, or ImageNet's)")
    p.add_argument("--linear-epochs", type=int, default=None, help="default: the run's linear_epochs")
    p.add_argument("--semisup", type=float, default=None, metavar="FRACTION",
                   help="instead: fine-tune on this fraction of labels (0.01, 0.1) of a streamed folder")
    p.add_argument("--subset-file", default=None, help="SimCLR's 1percent.txt / 10percent.txt (else a seeded split)")
    p.add_argument("--semisup-epochs", type=int, default=None, help="default: 30 (OSESSL A.1.2)")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=cmd_eval)
    p = sub.add_parser("quickstart", help="ReSA vs OSESSL on CIFAR-10: pretrain, k-NN, t-SNE/UMAP plot")
    p.add_argument("--out", default="results/quickstart")
    p.add_argument("--data-root", default=None, help="default: $OSESSL_DATA, else ../shared/data beside the repo")
    p.add_argument("--device", default="auto")
    p.add_argument("--epochs", type=int, default=None, help="default: 50 on GPU, a scaled-down run on CPU")
    p.set_defaults(func=cmd_quickstart)
    p = sub.add_parser("bench", help="time the training step: eager fp32 vs eager bf16 vs fast, every method")
    p.add_argument("--device", default="auto")
    p.add_argument("--data-root", default=None)
    p.add_argument("--methods", default=None, help="comma-separated; default: every registered method")
    p.add_argument("--modes", default=None, help="comma-separated subset of eager_fp32,eager_bf16,fast (default: all)")
    p.add_argument("--batch-size", type=int, default=None, help="default 256 (GPU), 32 (tiny CPU config)")
    p.add_argument("--warmup", type=int, default=None)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--tiny", action="store_true", help="the CPU-sized configuration (automatic without CUDA)")
    p.add_argument("--compile-on-cpu", action="store_true", help="also compile on CPU (slow to compile)")
    p.add_argument("--out", default=None, help="JSON path; default results/bench/bench-<device>.json "
                   "(imagenet-<device>.json with --imagenet)")
    p.add_argument("--imagenet", action="store_true", help="the ImageNet-shaped benchmark: a streamed folder at "
                   "224 px, ResNet-50 and -18, loader-only vs device-resident step vs the full loop")
    p.add_argument("--arch", default=None, help="--imagenet: comma-separated (default resnet50,resnet18)")
    p.add_argument("--workers", default=None, help="--imagenet: loader worker counts, e.g. 8,16 (the first trains)")
    p.add_argument("--backends", default=None, help="--imagenet: cpu,nvjpeg (default: nvjpeg only on CUDA)")
    p.add_argument("--image-size", type=int, default=None, help="--imagenet: default 224 (tiny: 64)")
    p.add_argument("--classes", type=int, default=None, help="--imagenet: classes of the generated folder (100)")
    p.set_defaults(func=cmd_bench)
    p = sub.add_parser("export", help="write a run's evaluated encoder as a torchvision state_dict + JSON card")
    p.add_argument("--run-dir", required=True, help="the run directory to export")
    p.add_argument("--out", required=True, help="weights file, e.g. encoder.pt (the card goes to encoder.json)")
    p.set_defaults(func=cmd_export)
    p = sub.add_parser("report", help="collect every result under results/ beside the paper's numbers, with plots")
    p.add_argument("--results", default="results", help="the results folder to read (default: results)")
    p.add_argument("--out", default="results/report", help="where report.json/csv and the PNGs go")
    p.set_defaults(func=cmd_report)
    p = sub.add_parser("methods", help="list registered methods and their parameters")
    p.set_defaults(func=cmd_methods)
    return parser


def _exit_code(e: BaseException) -> int | None:
    """2 for errors the user can fix by changing the command, 1 for a failed run, None for a bug."""
    from .engine.checkpoint import IncompatibleCheckpointError
    from .engine.run_lock import RunDirLockedError
    from .errors import NonFiniteLossError, RunDirError
    from .files import DiskFullError
    if isinstance(e, (ValueError, FileNotFoundError, NotADirectoryError, PermissionError, IncompatibleCheckpointError,
                      RunDirLockedError, RunDirError)):
        return 2
    if isinstance(e, (NonFiniteLossError, DiskFullError, OSError, RuntimeError)):
        return 1
    return None


def main(argv=None) -> int:
    import os
    import signal
    ns = build_parser().parse_args(argv)
    from .errors import TrainingInterrupted
    try:
        return ns.func(ns)
    except TrainingInterrupted as e:
        print(f"{e}", file=sys.stderr)
        return 128 + getattr(signal, e.signal, signal.SIGINT) if e.signal.startswith("SIG") else 130
    except KeyboardInterrupt:
        print("interrupted; the last checkpoint is intact: run the same command again to resume", file=sys.stderr)
        return 130
    except Exception as e:
        code = _exit_code(e)
        if code is None or os.environ.get("OSESSL_DEBUG"):
            raise
        message = " ".join(str(e).split())  # one line, whatever the message held
        print(f"error: {type(e).__name__}: {message}", file=sys.stderr)
        return code


if __name__ == "__main__":
    sys.exit(main())
