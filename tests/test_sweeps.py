"""The ablation notebooks' swept parameters reach the method: on a filled memory bank, with the same weights and
the same views, each value of a swept parameter gives a different loss (in smoke mode the 4-step rows can look
identical; this shows that they are not the same computation)."""
import copy

import pytest
import torch

from osessl_core.engine import Trainer

from test_train import tiny

pytestmark = pytest.mark.slow

# Table 6 (terms on/off), 7 (k), 8 (alpha), 15 (lam, mu), 16 (tau_s, tau_t): OSESSL's parameters.
OSESSL_SWEEPS = {"k": [2, 4, 8], "alpha": [1.0, 0.75, 0.5], "lam": [0.1, 1.0], "mu": [0.5, 1.0],
                 "tau_s": [0.1, 0.2], "tau_t": [0.01, 0.04], "use_align": [True, False], "use_disp": [True, False],
                 "use_mix_proto": [True, False], "use_mix_ins": [True, False]}


def filled(tmp_path, cifar_root, method, method_args):
    trainer = Trainer(tiny(tmp_path, method, data_root=cifar_root, subset=64, batch_size=16, max_steps=3,
                           method_args=method_args))
    trainer.fit()
    trainer.close()
    m = trainer.method
    rng = copy.deepcopy(trainer.rng)
    with torch.no_grad():
        views = m.make_views(trainer.batch(0), rng)
    return m, views


def total_loss(method, views):
    torch.manual_seed(0)
    state = copy.deepcopy(method.state_dict())
    with torch.no_grad():
        terms, _ = method.loss_terms(views)
    method.load_state_dict(state)  # BN running statistics: every value sees the same network
    return float(terms["loss"])


def test_every_swept_osessl_parameter_changes_the_loss(tmp_path, cifar_root):
    m, views = filled(tmp_path, cifar_root, "osessl", {"memory_size": 32, "k": 2})
    assert int(m.memory.filled) == 32  # the bank is full, so k and alpha act on real neighbours
    for name, values in OSESSL_SWEEPS.items():
        losses = []
        for v in values:
            p = copy.copy(m.params)
            setattr(p, name, v)
            m.params, saved = p, m.params
            losses.append(total_loss(m, views))
            m.params = saved
        assert len(set(losses)) == len(values), (name, losses)


def test_msf_and_cmsf_differ_on_the_same_weights(tmp_path, cifar_root):
    """With labels (sup) the constraint changes the neighbour sets at once. CMSF-self is MSF by design during
    the first epoch (epoch1="msf": there is no previous-epoch pool yet), which is why the 1-epoch smoke rows of
    msf and cmsf are equal; DDP and CMSF tests cover epoch 2."""
    m, views = filled(tmp_path, cifar_root, "cmsf", {"memory_size": 32, "constraint": "sup"})
    with_constraint = total_loss(m, views)
    m.params = copy.copy(m.params)
    m.params.constraint = "none"
    assert total_loss(m, views) != with_constraint
