import math

import pytest
import torch

from osessl_core.engine.schedule import lr_at, scaled_lr
from osessl_core.memory import MemoryBank
from osessl_core.models import build_encoder, build_projector, ema_update_, momentum_at, momentum_copy


def test_fifo_order_wraparound_and_fill_counter():
    bank = MemoryBank(size=5, dim=2)
    assert int(bank.filled) == 0 and bank.valid_mask().sum() == 0
    rows = torch.arange(16, dtype=torch.float32).view(8, 2)
    bank.enqueue(rows[:3])
    assert int(bank.filled) == 3 and bank.valid_mask().tolist() == [True] * 3 + [False] * 2
    assert torch.equal(bank.contents(), rows[:3])
    bank.enqueue(rows[3:7])                       # wraps: the two oldest are overwritten
    assert int(bank.filled) == 5
    assert torch.equal(bank.contents(), rows[2:7])
    with pytest.raises(ValueError, match="cannot enqueue"):
        bank.enqueue(torch.zeros(6, 2))


def test_bank_is_persistent_in_state_dict():
    bank = MemoryBank(4, 3)
    bank.enqueue(torch.ones(3, 3))
    fresh = MemoryBank(4, 3)
    fresh.load_state_dict(bank.state_dict())
    assert set(bank.state_dict()) == {"bank", "ptr", "filled"}
    assert torch.equal(fresh.contents(), bank.contents()) and int(fresh.ptr) == 3


@pytest.mark.parametrize("zero_pad,size", [(True, 34), (False, 32)])
def test_cifar_resnet18_stem(zero_pad, size):
    enc = build_encoder("resnet18", width=8, zero_pad=zero_pad)
    seen = []
    enc.conv1.register_forward_hook(lambda m, i, o: seen.append(i[0].shape[-1]))
    out = enc(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 64) and enc.out_dim == 64 and seen == [size]
    assert enc.conv1.kernel_size == (3, 3) and enc.conv1.stride == (1, 1)
    assert build_encoder("resnet18").out_dim == 512 and build_encoder("resnet50", width=8).out_dim == 256


def test_projector_shape_and_affine_free_bn():
    g = build_projector(512, 2048, 512)
    dims = [(m.in_features, m.out_features) for m in g if isinstance(m, torch.nn.Linear)]
    assert dims == [(512, 2048), (2048, 2048), (2048, 512)]
    assert isinstance(g[-1], torch.nn.BatchNorm1d) and not g[-1].affine
    with pytest.raises(ValueError, match="unknown architecture"):
        build_encoder("vgg")


def test_momentum_schedule_and_ema():
    assert momentum_at(0, 100) == pytest.approx(0.996)
    assert momentum_at(100, 100) == pytest.approx(1.0)
    assert momentum_at(50, 100) == pytest.approx(0.998)
    s = torch.nn.Linear(3, 3)
    t = momentum_copy(s)
    assert not any(p.requires_grad for p in t.parameters())
    with torch.no_grad():
        for p in s.parameters():
            p.add_(1.0)
    before = [p.clone() for p in t.parameters()]
    ema_update_(t, s, 0.9)
    for b, p_t, p_s in zip(before, t.parameters(), s.parameters()):
        assert torch.allclose(p_t, 0.9 * b + 0.1 * p_s)


def test_lr_schedule():
    peak = scaled_lr(0.3, 512)
    assert peak == pytest.approx(0.6)
    assert lr_at(0, 1000, 10, peak) == 0.0
    assert lr_at(5, 1000, 10, peak) == pytest.approx(0.3)
    assert lr_at(10, 1000, 10, peak) == pytest.approx(peak)
    assert lr_at(1000, 1000, 10, peak) == pytest.approx(0.1 * peak)
    mid = lr_at(505, 1000, 10, peak)
    assert mid == pytest.approx(0.06 + 0.54 * 0.5 * (1 + math.cos(math.pi * 0.5)))
