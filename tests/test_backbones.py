"""Backbones at 224 px (ResNet-18/50 with the ImageNet stem, ViT-S/16), the stem choice, the ViT projector, and the
CIFAR ResNet / CIFAR ViT / ResNet projector unchanged by them."""
import math

import pytest
import torch
import torchvision
from torch import nn

from osessl_core.models import (CifarResNet, CifarViT, build_encoder, build_predictor, build_projector, is_vit,
                                mlp)
from osessl_core.models.vit import sincos_position_embedding


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


# ---- ResNets with the ImageNet stem ------------------------------------------------------------------------------
@pytest.mark.parametrize("arch,dim,params", [("resnet18", 512, 11_176_512), ("resnet50", 2048, 23_508_032)])
def test_imagenet_stem_resnet_at_224(arch, dim, params):
    enc = build_encoder(arch, image_size=224, stem="imagenet")
    assert isinstance(enc, torchvision.models.ResNet) and enc.out_dim == dim
    assert isinstance(enc.fc, nn.Identity) and n_params(enc) == params  # torchvision's network, minus fc
    assert enc.conv1.kernel_size == (7, 7) and enc.conv1.stride == (2, 2)
    assert isinstance(enc.maxpool, nn.MaxPool2d) and enc.maxpool.kernel_size == 3 and enc.maxpool.stride == 2
    final = []
    enc.layer4.register_forward_hook(lambda m, i, o: final.append(o.shape[-2:]))
    out = enc(torch.randn(2, 3, 224, 224))
    assert out.shape == (2, dim) and final == [(7, 7)]  # 224 / (2 stem * 2 pool * 8 stages)
    out.square().mean().backward()
    assert enc.conv1.weight.grad.abs().sum() > 0


def test_auto_stem_and_override():
    assert isinstance(build_encoder("resnet18", width=8), CifarResNet)  # the default call: 32 px
    assert isinstance(build_encoder("resnet18", width=8, image_size=63), CifarResNet)
    assert isinstance(build_encoder("resnet18", image_size=64), torchvision.models.ResNet)
    assert isinstance(build_encoder("resnet18", image_size=224), torchvision.models.ResNet)
    cifar = build_encoder("resnet18", width=8, image_size=224, stem="cifar")
    assert isinstance(cifar, CifarResNet) and cifar.conv1.kernel_size == (3, 3)
    imnet = build_encoder("resnet18", image_size=32, stem="imagenet", zero_pad=False)  # zero_pad: no meaning here
    assert isinstance(imnet, torchvision.models.ResNet) and imnet.conv1.kernel_size == (7, 7)
    with pytest.raises(ValueError, match="64 channels wide"):
        build_encoder("resnet50", width=8, image_size=224)
    with pytest.raises(ValueError, match="unknown stem"):
        build_encoder("resnet18", stem="tiny")


# ---- ViT-S/16 --------------------------------------------------------------------------------------------------
def test_vit_s16_at_224_forward_backward_and_masked_tokens():
    vit = build_encoder("vit_s16", image_size=224)
    assert isinstance(vit, CifarViT) and vit.out_dim == 384 and vit.grid == 14 and vit.patch_size == 16
    assert len(vit.encoder.layers) == 12 and vit.encoder.layers[0].self_attention.num_heads == 6
    assert vit.mlp_dim == 1536 and 21e6 < n_params(vit) < 22e6
    x = torch.randn(2, 3, 224, 224)
    mask = torch.zeros(2, 196, dtype=torch.bool)
    mask[0, :50] = True
    tokens = vit.forward_tokens(x, mask)
    assert tokens.shape == (2, 1 + 196, 384)
    tokens.square().mean().backward()
    assert vit.mask_token.grad.abs().sum() > 0 and vit.conv_proj.weight.grad.abs().sum() > 0
    with torch.no_grad():
        cls = vit(x)
    assert cls.shape == (2, 384)
    torch.testing.assert_close(cls[1], tokens[1, 0].detach())  # only the masked image changes
    assert not torch.allclose(cls[0], tokens[0, 0].detach())


def test_vit_names_patch_by_stem_and_is_vit():
    assert build_encoder("vit_small", vit_depth=1).patch_size == 4  # the CIFAR ViT, as before
    assert build_encoder("vit_small", image_size=224, vit_depth=1).grid == 14  # auto: ViT-S/16 at 224
    assert build_encoder("vit_tiny", image_size=64, stem="cifar", vit_depth=1).grid == 16
    assert build_encoder("vit_s16", image_size=32, vit_depth=1).grid == 2  # always 16 px patches
    with pytest.raises(ValueError, match="16 px patches"):
        build_encoder("vit_s16", image_size=224, stem="cifar")
    assert is_vit("vit_s16") and is_vit("vit_tiny") and not is_vit("resnet50")


def test_cls_last_layers():
    vit = build_encoder("vit_tiny", vit_depth=3)
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(vit.cls_last_layers(x, 1), vit(x))
    two = vit.cls_last_layers(x, 2)
    assert two.shape == (2, 2 * 192)
    torch.testing.assert_close(two[:, 192:], vit(x))  # the last block's [CLS] comes last


def test_mocov3_recipe():
    vit = build_encoder("vit_s16", image_size=224, vit_depth=1, vit_recipe="mocov3")
    assert vit.encoder.layers[0].self_attention.num_heads == 12  # MoCo v3's ViT-Small
    pos = vit.encoder.pos_embedding
    assert not pos.requires_grad and pos.shape == (1, 197, 384)
    torch.testing.assert_close(pos[0], sincos_position_embedding(14, 384))
    attn = vit.encoder.layers[0].self_attention
    assert attn.in_proj_weight.abs().max() <= math.sqrt(6 / 768) and attn.in_proj_bias.abs().sum() == 0
    assert vit.class_token.abs().max() < 1e-4
    vit(torch.randn(1, 3, 224, 224)).sum().backward()
    with pytest.raises(ValueError, match="recipe"):
        build_encoder("vit_s16", image_size=224, vit_recipe="dino")


def test_sincos_position_embedding():
    pe = sincos_position_embedding(3, 8)  # dim/4 = 2 frequencies: 1 and 1/100
    assert pe.shape == (10, 8) and pe[0].abs().sum() == 0  # [CLS] row
    torch.testing.assert_close(pe[1], torch.tensor([0., 0., 1., 1., 0., 0., 1., 1.]))  # row 0, column 0
    torch.testing.assert_close(pe[2, :2], torch.tensor([math.sin(1), math.sin(0.01)]))  # row 0, column 1
    torch.testing.assert_close(pe[4, 4:6], torch.tensor([math.sin(1), math.sin(0.01)]))  # row 1, column 0


# ---- projectors ------------------------------------------------------------------------------------------------
def test_vit_projector_is_bn_free_with_gelu():
    for head in (build_projector(384, 64, 32, vit=True), build_predictor(32, 64, vit=True)):
        assert not any(isinstance(m, nn.BatchNorm1d) for m in head.modules())
        assert not any(isinstance(m, nn.ReLU) for m in head.modules())
        assert sum(isinstance(m, nn.GELU) for m in head) == len([m for m in head if isinstance(m, nn.Linear)]) - 1
    g = build_projector(384, 64, 32, vit=True)
    assert [(m.in_features, m.out_features) for m in g if isinstance(m, nn.Linear)] == [(384, 64), (64, 64), (64, 32)]
    assert isinstance(g[-1], nn.Linear)
    g(torch.randn(1, 384))  # no BN, so a batch of one works
    assert [type(m) for m in mlp([4, 8, 2], last_bn=False, norm=False)] == [nn.Linear, nn.ReLU, nn.Linear]


# ---- unchanged: values computed from the code before the ImageNet stem / ViT-S/16 / ViT projector were added ------
def seeded(ctor, x):
    torch.manual_seed(0)
    m = ctor()
    return n_params(m), m(x)


@torch.no_grad()
def test_cifar_networks_and_resnet_projector_unchanged():
    g = torch.Generator().manual_seed(1)
    x, h = torch.randn(4, 3, 32, 32, generator=g), torch.randn(4, 64, generator=g)
    cases = [  # (constructor, input, parameters, output sum, output |sum|, first three outputs)
        (lambda: build_encoder("resnet18", width=8), x, 175752, 208.894478, 208.894478, [0.919506, 1.025357, 0.524268]),
        (lambda: build_encoder("resnet18", width=8, zero_pad=False), x, 175752, 208.178309, 208.178309,
         [1.17483, 0.761799, 0.799018]),
        (lambda: build_encoder("resnet50", width=8), x, 373192, 1045.229218, 1045.229218,
         [1.140617, 0.967025, 0.974629]),
        (lambda: build_encoder("vit_tiny", vit_depth=1), x, 467520, 0.0, 618.337476, [0.121578, -0.831156, 1.476798]),
        (lambda: build_projector(64, 32, 16), h, 3792, 0.0, 54.827034, [0.137644, 1.618307, 0.940005]),
        (lambda: build_predictor(64, 32), h, 4256, -11.597798, 80.405069, [-0.397446, 0.176422, -0.622412]),
    ]
    for ctor, inp, params, total, abs_total, first in cases:
        n, y = seeded(ctor, inp)
        assert n == params
        assert y.double().sum().item() == pytest.approx(total, rel=1e-4, abs=1e-3)
        assert y.double().abs().sum().item() == pytest.approx(abs_total, rel=1e-4)
        assert y.flatten()[:3].tolist() == pytest.approx(first, rel=1e-3, abs=1e-5)
