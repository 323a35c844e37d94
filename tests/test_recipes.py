"""The packaged recipes (osessl_core/recipes) and the optimisers (engine/optim.py): LARS against lightly's."""
from __future__ import annotations

import copy
import dataclasses
import re
import typing

import pytest
import torch
from torch import nn

from osessl_core.config import ConfigError, TrainConfig, resolve_params
from osessl_core.engine.optim import LARS, build_optimizer
from osessl_core.methods.osessl import OSESSLParams
from osessl_core.recipes import _DIR, RECIPES, load_recipe, recipe_config

EXPECTED = ("cifar10", "cifar100", "imagenet100", "imagenet1k", "imagenet1k_vit")
# A value's comment must name where it comes from: a paper, the official code, or a decision entry.
SOURCE = re.compile(r"OSESSL|ReSA|docs/decisions\.md#|paper silent")


pytestmark = pytest.mark.usefixtures("single_thread")  # tiny tensors (conftest.py)


def _build(name: str) -> TrainConfig:
    return recipe_config(name)


def test_the_recipes_are_found():
    assert RECIPES == EXPECTED


@pytest.mark.parametrize("name", EXPECTED)
def test_every_recipe_builds_a_valid_config(name):
    cfg = _build(name)
    assert isinstance(cfg, TrainConfig) and cfg.recipe == name and cfg.method == "osessl"
    params = resolve_params(OSESSLParams, cfg.method_args, "osessl")
    assert params.mu == (1.0 if name.startswith("cifar") else 0.25)
    assert params.memory_size == (4096 if name.startswith("cifar") else 65536)
    assert cfg.dataset == name.split("_")[0]


@pytest.mark.parametrize("name", EXPECTED)
def test_every_value_has_its_own_line_and_a_citation(name):
    lines = (_DIR / f"{name}.yaml").read_text(encoding="utf-8").splitlines()
    keys = []
    for n, line in enumerate(lines, 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        m = re.match(r"^(\s*)(\w+):(.*)$", line)
        assert m, f"{name}.yaml:{n} is not `key: value  # source`: {line!r}"
        value, _, comment = m.group(3).partition(" #")
        keys.append(m.group(2))
        if value.strip():  # a mapping header (method_args:) sets no value itself
            assert "{" not in value and "[" not in value, f"{name}.yaml:{n}: one value per line"
            assert SOURCE.search(comment), f"{name}.yaml:{n} has no citation: {line!r}"
    loaded = load_recipe(name) if name != "imagenet1k_vit" else _raw(name)
    assert sorted(keys) == sorted([*loaded, *loaded.get("method_args", {})])


def _raw(name):
    import yaml
    return yaml.safe_load((_DIR / f"{name}.yaml").read_text(encoding="utf-8"))


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_recipes_are_the_current_defaults(name):
    explicit = load_recipe(name)
    cfg = recipe_config(name)
    assert cfg == TrainConfig(**explicit, recipe=name)
    defaults = TrainConfig()
    changed = {k: v for k, v in explicit.items() if k != "method_args" and getattr(defaults, k) != v}
    assert changed == ({} if name == "cifar10" else {"dataset": "cifar100"})
    # the method parameters the recipe spells out are exactly the defaults
    assert resolve_params(OSESSLParams, cfg.method_args, "osessl") == OSESSLParams()
    # so the whole config is TrainConfig() but for the recipe's name (and method_args written out)
    assert dataclasses.replace(cfg, method_args={}, recipe=None) == dataclasses.replace(defaults, dataset=cfg.dataset)


def test_flags_override_and_method_args_merge_key_by_key():
    cfg = recipe_config("imagenet100", epochs=10, batch_size="64", method_args={"mu": 0.5, "k": 4})
    assert (cfg.epochs, cfg.batch_size, cfg.base_lr) == (10, 64, 0.5)
    assert cfg.method_args == {"lam": 1.0, "mu": 0.5, "memory_size": 65536, "blur_prob": 0.5, "k": 4}
    assert cfg.recipe == "imagenet100"
    # another method: the recipe's osessl parameters are not carried over, its view settings are where they exist
    assert recipe_config("imagenet100", method="resa").method_args == {"blur_prob": 0.5}
    assert recipe_config("imagenet100", method="simclr").method_args == {}
    assert recipe_config("imagenet100", method="resa", method_args={"blur_prob": 0.5}).method_args == {"blur_prob": 0.5}


def test_a_users_own_file(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("dataset: cifar100  # mine\nepochs: 3\nmethod_args:\n  mu: 0.5\n")
    cfg = recipe_config(str(path), epochs=4)
    assert (cfg.dataset, cfg.epochs, cfg.method_args, cfg.recipe) == ("cifar100", 4, {"mu": 0.5}, str(path))


def test_errors_are_one_line(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_recipe("cifar11")
    assert str(err.value) == ("unknown recipe 'cifar11'; available: " + ", ".join(EXPECTED)
                              + " (or a path to a .yaml file)")
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochs: 3\nepoks: 4\nlearning_rate: 1\n")
    with pytest.raises(ConfigError) as err:
        load_recipe(bad)
    assert "\n" not in str(err.value) and "['epoks', 'learning_rate']" in str(err.value)
    bad.write_text("method_args:\n  muu: 1\n")
    with pytest.raises(ConfigError, match="muu") as err:
        recipe_config(bad)
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="epochs") as err:
        recipe_config("cifar10", epochs="many")
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="not found"):
        load_recipe(tmp_path / "missing.yaml")


# ---------------------------------------------------------------------------------------------------- optimisers

class _Net(nn.Module):
    """Conv + BN + two linear branches, one zero-initialised (LARS's ||w|| = 0 case), biases."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)
        self.fc, self.side = nn.Linear(4 * 6 * 6, 5), nn.Linear(4 * 6 * 6, 5)
        nn.init.zeros_(self.side.weight)

    def forward(self, x):
        h = torch.relu(self.bn(self.conv(x))).flatten(1)
        return self.fc(h) + self.side(h)


def _loss(net, step):
    g = torch.Generator().manual_seed(100 + step)
    x, y = torch.randn(8, 3, 8, 8, generator=g), torch.randint(0, 5, (8,), generator=g)
    return nn.functional.cross_entropy(net(x), y)


def _train(net, opt, steps, lrs=None):
    for s in range(steps):
        if lrs is not None:
            for group in opt.param_groups:
                group["lr"] = lrs[s]
        opt.zero_grad(set_to_none=True)
        _loss(net, s).backward()
        opt.step()


def test_lars_matches_lightly():
    from lightly.utils.lars import LARS as LightlyLARS
    torch.manual_seed(0)
    ours_net = _Net()
    ref_net = copy.deepcopy(ours_net)
    lr, momentum, wd, steps = 2.0, 0.9, 1e-4, 6
    ours = build_optimizer(ours_net.named_parameters(), "lars", lr, momentum, wd)
    # lightly excludes a tensor from the adaptation and the decay by its group's weight_decay being 0: the
    # 1-D tensors (biases, BN) go in such a group, as ours excludes them by ndim
    ref = LightlyLARS([{"params": [p for p in ref_net.parameters() if p.ndim > 1]},
                       {"params": [p for p in ref_net.parameters() if p.ndim <= 1], "weight_decay": 0.0}],
                      lr=lr, momentum=momentum, weight_decay=wd, trust_coefficient=0.001)
    start = copy.deepcopy(ours_net.state_dict())
    lrs = [lr * f for f in (0.5, 1.0, 1.0, 0.8, 0.4, 0.1)]  # the trainer rewrites group lr every step
    _train(ours_net, ours, steps, lrs)
    _train(ref_net, ref, steps, lrs)
    for (name, a), b in zip(ours_net.named_parameters(), ref_net.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7, msg=name)
        torch.testing.assert_close(ours.state[a]["momentum_buffer"], ref.state[b]["momentum_buffer"],
                                   rtol=1e-5, atol=1e-7, msg=name)
        assert not torch.equal(a, start[name]), f"{name} never moved"
    # not vacuous: plain SGD from the same start ends elsewhere
    sgd_net = _Net()
    sgd_net.load_state_dict(start)
    _train(sgd_net, torch.optim.SGD(sgd_net.parameters(), lr=lr, momentum=momentum, weight_decay=wd), steps, lrs)
    assert not torch.allclose(sgd_net.fc.weight, ours_net.fc.weight, atol=1e-3)


def test_lars_first_step_is_the_formula():
    torch.manual_seed(1)
    net = _Net()
    w0, lr, wd, eta = net.fc.weight.detach().clone(), 0.7, 1e-3, 1e-3
    opt = build_optimizer(net.parameters(), "lars", lr, 0.9, wd)
    _loss(net, 0).backward()
    g = net.fc.weight.grad.clone()
    side_g = net.side.weight.grad.clone()
    opt.step()
    ratio = eta * w0.norm() / (g.norm() + wd * w0.norm() + 1e-8)
    torch.testing.assert_close(net.fc.weight, w0 - lr * ratio * (g + wd * w0), rtol=1e-6, atol=1e-8)
    # a zero weight takes ratio 1 (otherwise it could never leave 0)
    torch.testing.assert_close(net.side.weight, -lr * side_g)


def test_lars_one_dimensional_tensors_get_plain_sgd_momentum():
    # gradients set by hand, no autograd: 1-D tensors see neither the decay nor the adaptation
    b = nn.Parameter(torch.tensor([1.0, -2.0, 3.0]))
    w = nn.Parameter(torch.ones(2, 2))
    opt = LARS([b, w], lr=0.1, momentum=0.9, weight_decay=0.5)
    grads = [torch.tensor([0.5, 0.0, -1.0]), torch.tensor([1.0, 1.0, 1.0]), torch.tensor([-2.0, 0.5, 0.0])]
    lrs = [0.1, 0.05, 0.2]
    expect, buf = b.detach().clone(), None
    for g, lr in zip(grads, lrs):
        b.grad, w.grad = g.clone(), torch.full((2, 2), 0.1)
        opt.param_groups[0]["lr"] = lr
        opt.step()
        buf = g.clone() if buf is None else 0.9 * buf + g
        expect -= lr * buf
        torch.testing.assert_close(b.detach(), expect, rtol=0, atol=1e-7)
    # w, 2-D, is adapted: its steps are about eta * ||w|| / ||g|| of plain SGD's, which would move it by more than 0.05
    assert 0 < (1 - w.detach()).abs().max() < 1e-3
    # a tensor without a gradient is left alone
    b.grad = None
    before = b.detach().clone()
    opt.step()
    assert torch.equal(b.detach(), before)


def test_lars_resumes_from_its_state_dict():
    torch.manual_seed(2)
    a = _Net()
    b = copy.deepcopy(a)
    opt_a = build_optimizer(a.parameters(), "lars", 1.0, 0.9, 1e-4)
    _train(a, opt_a, 4)
    opt_b = build_optimizer(b.parameters(), "lars", 1.0, 0.9, 1e-4)
    _train(b, opt_b, 2)
    state, weights = copy.deepcopy(opt_b.state_dict()), copy.deepcopy(b.state_dict())
    c = _Net()
    c.load_state_dict(weights)
    opt_c = build_optimizer(c.parameters(), "lars", 1.0, 0.9, 1e-4)
    opt_c.load_state_dict(state)
    for s in (2, 3):
        opt_c.zero_grad()
        _loss(c, s).backward()
        opt_c.step()
    for x, y in zip(a.parameters(), c.parameters()):
        assert torch.equal(x, y)


def test_sgd_is_exactly_torch_sgd():
    torch.manual_seed(3)
    net = _Net()
    ref_net = copy.deepcopy(net)
    opt = build_optimizer(net.named_parameters(), "sgd", 0.3, 0.9, 1e-4)
    # what engine/trainer.py built before build_optimizer existed (on CPU: no fused argument)
    ref = torch.optim.SGD([p for p in ref_net.parameters() if p.requires_grad], lr=0.3, momentum=0.9,
                          weight_decay=1e-4)
    assert type(opt) is torch.optim.SGD and opt.defaults == ref.defaults
    _train(net, opt, 4, [0.1, 0.3, 0.2, 0.05])
    _train(ref_net, ref, 4, [0.1, 0.3, 0.2, 0.05])
    for x, y in zip(net.parameters(), ref_net.parameters()):
        assert torch.equal(x, y)


def test_adamw_and_unknown_names():
    net = _Net()
    opt = build_optimizer(net.parameters(), "adamw", 5e-4, 0.9, 0.1)
    assert type(opt) is torch.optim.AdamW and opt.defaults["weight_decay"] == 0.1
    assert len(opt.param_groups[0]["params"]) == len(list(net.parameters()))  # decay on every tensor, as ReSA's code
    with pytest.raises(ValueError, match="unknown optimizer 'adam'"):
        build_optimizer(net.parameters(), "adam", 1.0, 0.9, 0.0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_lars_step_has_no_host_sync():
    net = _Net().cuda()
    opt = build_optimizer(net.parameters(), "lars", 1.0, 0.9, 1e-4)
    for s in range(2):  # the second step takes the momentum-buffer path
        opt.zero_grad(set_to_none=True)
        x = torch.randn(8, 3, 8, 8, device="cuda")
        net(x).square().mean().backward()
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            opt.step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
