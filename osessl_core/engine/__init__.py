from .checkpoint import IncompatibleCheckpointError, load_checkpoint, save_checkpoint
from .schedule import lr_at, scaled_lr
from .trainer import NonFiniteLossError, Trainer, TrainResult, train

__all__ = ["Trainer", "TrainResult", "train", "NonFiniteLossError", "IncompatibleCheckpointError",
           "load_checkpoint", "save_checkpoint", "lr_at", "scaled_lr"]
