from .heads import VIT_MLP, build_predictor, build_projector, mlp
from .momentum import ema_update_, momentum_at, momentum_copy
from .resnet import ARCHITECTURES, CifarResNet, build_encoder
from .vit import VIT_ARCHITECTURES, CifarViT, is_vit

__all__ = ["ARCHITECTURES", "VIT_ARCHITECTURES", "VIT_MLP", "CifarResNet", "CifarViT", "build_encoder",
           "build_projector", "build_predictor", "is_vit", "mlp", "momentum_copy", "ema_update_", "momentum_at"]
