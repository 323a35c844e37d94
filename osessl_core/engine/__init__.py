from .checkpoint import IncompatibleCheckpointError, load_checkpoint, save_checkpoint
from .run_lock import RunDirLockedError
from .schedule import lr_at, scaled_lr
from ..errors import NonFiniteLossError, RunDirError, TrainingInterrupted
from .trainer import Trainer, TrainResult, load_run, train

__all__ = ["Trainer", "TrainResult", "train", "load_run", "NonFiniteLossError", "IncompatibleCheckpointError",
           "RunDirLockedError", "RunDirError", "TrainingInterrupted", "load_checkpoint", "save_checkpoint", "lr_at",
           "scaled_lr"]
