from .heads import build_predictor, build_projector, mlp
from .momentum import ema_update_, momentum_at, momentum_copy
from .resnet import ARCHITECTURES, CifarResNet, build_encoder

__all__ = ["ARCHITECTURES", "CifarResNet", "build_encoder", "build_projector", "build_predictor", "mlp",
           "momentum_copy", "ema_update_", "momentum_at"]
