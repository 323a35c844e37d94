from .checkpoint import IncompatibleCheckpointError, load_checkpoint, save_checkpoint
from .schedule import lr_at, scaled_lr
from .trainer import NonFiniteLossError, Trainer, TrainResult, load_run, train

__all__ = ["Trainer", "TrainResult", "train", "load_run", "NonFiniteLossError", "IncompatibleCheckpointError",
           "load_checkpoint", "save_checkpoint", "lr_at", "scaled_lr"]
