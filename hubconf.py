"""torch.hub entry points: `torch.hub.load(<repo dir>, "resnet18_osessl", source="local", weights=<encoder.pt>)`
returns the exported backbone (torchvision's ResNet with the run's stem, fc = Identity), in eval mode.
Weights come from `python -m osessl_core export --run-dir R --out encoder.pt`; nothing is downloaded."""
dependencies = ["torch", "torchvision"]


def resnet18_osessl(weights=None, **kwargs):
    from osessl_core.export import build_torchvision_resnet, load_encoder
    return load_encoder(weights, "resnet18") if weights else build_torchvision_resnet("resnet18")


def resnet50_osessl(weights=None, **kwargs):
    from osessl_core.export import build_torchvision_resnet, load_encoder
    return load_encoder(weights, "resnet50") if weights else build_torchvision_resnet("resnet50")
