"""Run configuration: one flat dataclass for the engine plus a per-method parameter dataclass.

Every value, from a flag, `-m name=value`, a `--config` JSON file, a notebook or `from_dict`, is converted to
the field's declared type by `coerce` (hand-written: the types used are few, and a dataclass-to-CLI library
would replace argparse's help and the `-m` syntax without removing this check for JSON and notebook values),
and every numeric range is checked by `TrainConfig.validate`, so a bad value is a one-line error at start.

The resolved config (with method parameters filled in) is written into every run directory, and a resumed run
refuses a checkpoint whose defining fields differ.
"""
from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from .paths import default_data_root


class ConfigError(ValueError):
    """A bad configuration value: reported as one line naming the field."""


_TRUE, _FALSE = {"true", "1", "yes", "on"}, {"false", "0", "no", "off"}


def coerce(value: Any, typ: Any, name: str) -> Any:
    """`value` converted to the annotation `typ` (bool, int, float, str, Optional, Literal, tuple, list).

    bool takes true/false (any case), 1/0 and yes/no; int rejects 8.5 and booleans; float takes ints; strings
    from the command line are parsed for the other types. Anything else raises ConfigError naming `name`."""
    origin, args = typing.get_origin(typ), typing.get_args(typ)

    def fail():
        shown = getattr(typ, "__name__", None) or str(typ).replace("typing.", "")
        return ConfigError(f"{name}: expected {shown}, got {value!r}")

    if typ is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null") and type(None) in args):
            if type(None) in args:
                return None
        for arg in (a for a in args if a is not type(None)):
            try:
                return coerce(value, arg, name)
            except ConfigError:
                pass
        raise fail()
    if origin is typing.Literal:
        for choice in args:
            try:
                if coerce(value, type(choice), name) == choice:
                    return choice
            except ConfigError:
                pass
        raise ConfigError(f"{name}: expected one of {list(args)}, got {value!r}")
    if typ is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        raise fail()
    if typ is int:
        if isinstance(value, bool):
            raise fail()
        if isinstance(value, int):
            return value
        if isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                raise fail() from None
        raise fail()
    if typ is float:
        if isinstance(value, bool):
            raise fail()
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value.strip())
            except ValueError:
                raise fail() from None
        raise fail()
    if typ is str:
        if isinstance(value, str):
            return value
        raise fail()
    if origin in (tuple, list) or typ in (tuple, list):
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                raise fail() from None
        if not isinstance(value, (list, tuple)):
            raise fail()
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"{name}: expected {len(args)} values, got {value!r}")
            return tuple(coerce(v, a, f"{name}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        item = args[0] if args else Any
        out = [coerce(v, item, f"{name}[{i}]") for i, v in enumerate(value)]
        return tuple(out) if (origin or typ) is tuple else out
    if origin is dict or typ is dict:
        if isinstance(value, dict):
            return dict(value)
        raise fail()
    return value


def field_comments(cls: type) -> dict[str, str]:
    """{field: its trailing `# comment`} from the source of a dataclass and its bases: the one place each
    field is explained, reused as the CLI's help and by `methods`."""
    import inspect
    import re
    out: dict[str, str] = {}
    for klass in reversed(cls.__mro__[:-1]):
        try:
            source = inspect.getsource(klass)
        except (OSError, TypeError):
            continue
        for m in re.finditer(r"^    (\w+): [^=\n]+=[^#\n]*#\s*(.+)$", source, re.M):
            out[m.group(1)] = m.group(2).strip()
    return out


def coerce_fields(cls: type, values: dict[str, Any], owner: str) -> dict[str, Any]:
    """Every value of `values` converted to `cls`'s declared field type; unknown names are an error."""
    hints = typing.get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        what = "config field(s)" if owner == "config" else f"parameter(s) for {owner}"
        raise ConfigError(f"unknown {what} {unknown}; valid: {sorted(known)}")
    prefix = "" if owner == "config" else f"{owner} parameter "
    return {k: coerce(v, hints[k], prefix + k) for k, v in values.items()}


@dataclass
class TrainConfig:
    # what to train
    method: str = "osessl"
    dataset: str = "cifar10"
    data_root: str = field(default_factory=lambda: str(default_data_root()))  # $OSESSL_DATA, else ../shared/data beside the repo
    subset: int | None = None          # train on a seeded random subset of this many images (CPU smoke runs)
    method_args: dict[str, Any] = field(default_factory=dict)
    image_size: int | None = None      # training resolution; None = the data's own (CIFAR 32, streamed folders 224)
    class_list: str | None = None      # file of class-folder names, one per line, selecting classes of a folder
    stream: bool | None = None         # decode per batch, not held on the device; None = ImageNet sets, folders > 64 px
    bad_files: Literal["fail", "skip"] = "fail"  # an unreadable image: stop naming it, or skip and count it
    loader_workers: int | None = None  # decoding processes of a streamed folder; None = min(8, CPU cores)
    decode: Literal["cpu", "nvjpeg"] = "cpu"  # where a streamed folder's JPEGs are decoded
    recipe: str | None = None          # start from a preset (osessl_core/recipes/<name>.yaml, or a .yaml path); flags win
    # networks
    arch: str = "resnet18"
    stem: Literal["auto", "cifar", "imagenet"] = "auto"  # ResNet stem / ViT patch: auto = CIFAR below 64 px, else ImageNet
    width: int = 64                    # first-stage channels; 64 is the standard ResNet
    zero_pad: bool = True              # ReSA's CIFAR quirk: pad 32x32 inputs to 34x34
    proj_hidden: int = 2048
    proj_out: int = 512
    predictor: bool = False            # ReSA uses one only on ImageNet
    # optimisation (ReSA CIFAR defaults, docs/decisions.md#d-resa-4)
    epochs: int = 1000
    batch_size: int = 256
    base_lr: float = 0.3               # scaled by batch_size * world_size / 256
    weight_decay: float = 1e-4
    optimizer: Literal["sgd", "lars", "adamw"] = "sgd"  # the paper: SGD for ResNets, AdamW for ViT-S/16 (ReSA Table 8)
    sgd_momentum: float = 0.9
    warmup_epochs: float = 2.0
    final_lr_ratio: float = 0.1
    momentum_base: float = 0.996
    # execution
    seed: int = 0
    device: str = "auto"               # auto | cpu | cuda | cuda:N
    amp: bool | None = None            # bf16 autocast; None = on for CUDA
    compile: bool | None = None        # torch.compile the loss and the augmentations; None = on for CUDA
    cuda_graphs: bool | None = None    # replay the compiled step as CUDA graphs; None = on for compiled 1-GPU runs
    channels_last: bool | None = None  # None = on for CUDA
    tf32: bool | None = None           # TF32 matmuls/convolutions in fp32 code; None = on for CUDA
    max_steps: int | None = None       # stop early (the schedules still use the full length)
    time_limit: float | None = None    # seconds of training in this process; then checkpoint and exit (resumable)
    # run directory and bookkeeping
    run_dir: str = "runs/default"
    resume: bool = True
    allow_config_change: bool = False  # resume even if a schedule/optimiser field changed (recorded in the run dir)
    ckpt_every: int = 0                # steps between checkpoints; 0 = once per epoch
    log_every: int = 50
    progress: bool = True
    knn_monitor_every: int = 0         # epochs between online 5-NN checks on a fixed subset (0 = off)
    knn_monitor_train: int = 5000      # train images in the online k-NN bank
    knn_monitor_test: int = 1000       # test images it classifies
    tensorboard: bool = False          # also log the metrics to <run_dir>/tensorboard (needs tensorboard)
    # evaluation after training
    eval_knn: bool = True
    eval_linear: bool = False
    linear_epochs: int = 500
    eval_test_subset: int | None = None  # evaluate on a seeded subset of the test split (CPU smoke runs)

    # Fields that define the learning problem: a checkpoint is only resumable if these match.
    # The per-rank batch_size is not among them: the global batch is checked instead, so a run can resume on a
    # different number of ranks when batch_size x world_size is unchanged.
    IDENTITY = ("method", "dataset", "subset", "method_args", "image_size", "class_list", "arch", "stem", "width",
                "zero_pad", "proj_hidden", "proj_out", "predictor", "seed")
    # Fields that change how a run executes or is evaluated, not what it learns: free to differ on resume, and left
    # out of the notebooks' run-directory names. Every other field changes the trajectory (the schedule, the
    # optimiser): a resume that changes one is refused unless allow_config_change, which records the change.
    EXECUTION = frozenset({
        "data_root", "device", "amp", "compile", "cuda_graphs", "channels_last", "tf32", "max_steps", "time_limit",
        "run_dir", "resume", "allow_config_change", "ckpt_every", "log_every", "progress", "eval_knn", "eval_linear",
        "linear_epochs", "eval_test_subset", "batch_size", "knn_monitor_every", "knn_monitor_train", "knn_monitor_test",
        "tensorboard", "bad_files", "loader_workers", "decode", "recipe"})  # batch_size: the global batch is checked instead

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        """Every numeric range, checked once when the config is built (ConfigError names the field)."""
        def need(ok: bool, name: str, rule: str):
            if not ok:
                raise ConfigError(f"{name} must be {rule}, got {getattr(self, name)!r}")

        need(self.image_size is None or self.image_size >= 8, "image_size", ">= 8 pixels (or unset)")
        need(self.loader_workers is None or self.loader_workers >= 0, "loader_workers", ">= 0 (or unset)")
        need(self.knn_monitor_every >= 0, "knn_monitor_every", ">= 0 (0 = off)")
        for name in ("batch_size", "epochs", "width", "proj_hidden", "proj_out", "log_every", "linear_epochs",
                     "knn_monitor_train", "knn_monitor_test"):
            need(getattr(self, name) >= 1, name, ">= 1")
        for name in ("subset", "eval_test_subset", "max_steps"):
            need(getattr(self, name) is None or getattr(self, name) >= 1, name, ">= 1 (or unset)")
        need(self.ckpt_every >= 0, "ckpt_every", ">= 0 (0 = once per epoch)")
        for name in ("base_lr", "weight_decay", "warmup_epochs"):
            need(math.isfinite(getattr(self, name)) and getattr(self, name) >= 0, name, "finite and >= 0")
        need(self.base_lr > 0, "base_lr", "> 0")
        need(0 <= self.final_lr_ratio <= 1, "final_lr_ratio", "in [0, 1]")
        need(0 <= self.sgd_momentum < 1, "sgd_momentum", "in [0, 1)")
        need(0 <= self.momentum_base <= 1, "momentum_base", "in [0, 1]")
        need(self.time_limit is None or (math.isfinite(self.time_limit) and self.time_limit > 0), "time_limit",
             "> 0 seconds (or unset)")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        # A run dir's config.json also records "resolved" (sizes, padding, views: what the config became for
        # its data); it is information, not a setting.
        return cls(**coerce_fields(cls, {k: v for k, v in d.items() if k != "resolved"}, "config"))

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True))

    @classmethod
    def load(cls, path: str | Path) -> "TrainConfig":
        return cls.from_dict(json.loads(Path(path).read_text()))


def resolve_params(params_cls: type, overrides: dict[str, Any], method: str):
    """Build a method's parameter dataclass from user overrides, typed and with misspelled names rejected."""
    return params_cls(**coerce_fields(params_cls, dict(overrides), f"method {method!r}"))
