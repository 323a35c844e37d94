"""Method registry: adding a method is one new module plus one line here."""
from __future__ import annotations

from ..config import resolve_params
from .base import Batch, DataContext, Method, RunContext, StepRandom, TwinMethod, Views
from .osessl import OSESSL
from .byol import BYOL
from .cmsf import CMSF, MSF
from .dsa import DSA
from .dino import DINO
from .swav import SwAV
from .wmse import WMSE
from .resa import ReSA
from .simclr import SimCLR
from .sop import SOP
from .simsiam import SimSiam
from .mocov3 import MoCoV3
from .barlow import BarlowTwins
from .vicreg import VICReg

METHODS: dict[str, type[Method]] = {
    "resa": ReSA,
    "simclr": SimCLR,
    "byol": BYOL,
    "dsa": DSA,
    "osessl": OSESSL,
    "sop": SOP,
    "msf": MSF,
    "cmsf": CMSF,
    "simsiam": SimSiam,
    "mocov3": MoCoV3,
    "barlow": BarlowTwins,
    "vicreg": VICReg,
    "swav": SwAV,
    "dino": DINO,
    "wmse": WMSE,
}


def build_method(cfg, data: DataContext, world_size: int | None = None, rank: int | None = None) -> Method:
    """The method of a TrainConfig, built from its typed context (the process group's size and rank unless
    given) and its typed Params."""
    from ..distributed import rank as current_rank, world_size as current_world_size
    name = cfg.method.lower()
    if name not in METHODS:
        raise ValueError(f"unknown method {cfg.method!r}; registered: {sorted(METHODS)}")
    cls = METHODS[name]
    ctx = RunContext.from_config(cfg, data, current_world_size() if world_size is None else world_size,
                                 current_rank() if rank is None else rank)
    return cls(ctx, resolve_params(cls.Params, dict(cfg.method_args), name), data)


__all__ = ["METHODS", "build_method", "Method", "TwinMethod", "DataContext", "RunContext", "StepRandom", "Batch",
           "Views"]
