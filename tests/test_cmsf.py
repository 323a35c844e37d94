"""MSF / CMSF: neighbour selection and loss against literal float64 loops, the memory and the two-slot pool against
a transcription of the official code's data flow, then real-CIFAR runs, resume and the CLI."""
import math

import pytest
import torch
import torch.nn.functional as F

from osessl_core.config import TrainConfig
from osessl_core.engine import Trainer, train
from osessl_core.losses import (constrain_to_labels, constrain_to_members, mean_shift_loss, nearest,
                                pairwise_distances, pseudo_labels)
from osessl_core.methods import DataContext, build_method
from osessl_core.data.exemplars import labelled_fraction
from osessl_core.methods.cmsf import EmbeddingCache, LabelledMemory


def unit(*shape, gen):
    return F.normalize(torch.randn(*shape, dtype=torch.float64, generator=gen), dim=-1)


def dist(a, b):
    return 2 - 2 * sum(x * y for x, y in zip(a, b))


def k_smallest(candidates, key, k):
    return sorted(sorted(candidates, key=key)[:k])


# ---- functional pieces -------------------------------------------------------------------------------------
def test_mean_shift_loss_literal():
    gen = torch.Generator().manual_seed(0)
    B, M, d, k = 4, 10, 6, 3
    u, q, mem = unit(B, d, gen=gen), unit(B, d, gen=gen), unit(M, d, gen=gen)
    valid = torch.tensor([True] * 7 + [False] * 3)
    nn_idx = nearest(pairwise_distances(u, mem), k, valid)
    U, Q, Mem = u.tolist(), q.tolist(), mem.tolist()
    expected = 0.0
    for i in range(B):
        nbrs = k_smallest([j for j in range(M) if valid[j]], lambda j: dist(U[i], Mem[j]), k)
        assert sorted(nn_idx[i].tolist()) == nbrs
        expected += sum(dist(Q[i], Mem[j]) for j in nbrs) / k
    q.requires_grad_()
    mem.requires_grad_()
    loss = mean_shift_loss(q, mem, nn_idx)
    assert loss.item() == pytest.approx(expected / B, abs=1e-12)
    loss.backward()
    assert q.grad.abs().sum() > 0 and mem.grad is None  # the memory is a constant


def test_self_constraint_literal():
    """S_i = the k nearest of u_i in C_i (C_i: the k' NNs of w_i in M' among eligible entries), others only if
    |C_i| < k."""
    gen = torch.Generator().manual_seed(1)
    B, M, d, k = 3, 12, 5, 3
    u, w, mem, mem_prev = unit(B, d, gen=gen), unit(B, d, gen=gen), unit(M, d, gen=gen), unit(M, d, gen=gen)
    valid = torch.tensor([True] * 10 + [False] * 2)
    eligible = valid & torch.tensor([True, False] * 6)
    for k_prime in (2, 4, 7):  # 7 > the 5 eligible entries: C_i is padded by top-k' and the padding ignored
        members = nearest(pairwise_distances(w, mem_prev), k_prime, eligible)
        picked = nearest(constrain_to_members(pairwise_distances(u, mem), members, eligible), k, valid)
        U, W, Mem, Prev = u.tolist(), w.tolist(), mem.tolist(), mem_prev.tolist()
        for i in range(B):
            C = k_smallest([j for j in range(M) if eligible[j]], lambda j: dist(W[i], Prev[j]), k_prime)
            inside = k_smallest(C, lambda j: dist(U[i], Mem[j]), k)
            outside = k_smallest([j for j in range(M) if valid[j] and j not in C], lambda j: dist(U[i], Mem[j]),
                                 k - len(inside))
            assert sorted(picked[i].tolist()) == sorted(inside + outside), (k_prime, i)


@pytest.mark.parametrize("setting", ["sup", "semi"])
def test_label_constraint_literal(setting):
    """Rows with a label take the k nearest same-label valid entries; semi rows without one (-1) take plain MSF."""
    gen = torch.Generator().manual_seed(2)
    B, M, d, k = 5, 24, 4, 3
    u, mem = unit(B, d, gen=gen), unit(M, d, gen=gen)
    mem_labels = torch.tensor([0, 1, -1, 2] * 6)      # -1: a not-confident pseudo-label
    valid = torch.ones(M, dtype=torch.bool)
    valid[-4:] = False
    y = torch.tensor([0, 1, 2, 0, 1]) if setting == "sup" else torch.tensor([0, -1, 2, -1, 1])
    picked = nearest(constrain_to_labels(pairwise_distances(u, mem), y, mem_labels), k, valid)
    U, Mem = u.tolist(), mem.tolist()
    for i in range(B):
        allowed = [j for j in range(M) if valid[j] and (y[i] < 0 or mem_labels[j] == y[i])]
        assert sorted(picked[i].tolist()) == k_smallest(allowed, lambda j: dist(U[i], Mem[j]), k), i


def test_pseudo_labels_literal():
    gen = torch.Generator().manual_seed(3)
    logits = 3 * torch.randn(64, 4, dtype=torch.float64, generator=gen)
    known = torch.where(torch.arange(64) % 5 == 0, torch.arange(64) % 4, torch.full((64,), -1))
    out = pseudo_labels(logits, known, 0.85).tolist()
    expected = []
    for row, kn in zip(logits.tolist(), known.tolist()):
        z = sum(math.exp(v) for v in row)
        p = [math.exp(v) / z for v in row]
        expected.append(kn if kn >= 0 else (p.index(max(p)) if max(p) >= 0.85 else -1))
    assert out == expected and 0 < sum(e >= 0 for e in expected) < 64


# ---- memory and pool ---------------------------------------------------------------------------------------
def test_memory_fifo_order_with_labels_and_index():
    mem = LabelledMemory(size=5, dim=2)
    rows = torch.arange(16, dtype=torch.float32).view(8, 2)
    labels, index = torch.arange(10, 18), torch.arange(100, 108)

    def oldest_first(t):
        filled, ptr = int(mem.filled), int(mem.ptr)
        return t[:filled] if filled < mem.size else torch.cat([t[ptr:], t[:ptr]])

    for lo, hi in [(0, 3), (3, 7)]:                   # the second enqueue wraps: the two oldest are overwritten
        before = {k: v.clone() for k, v in mem.state_dict().items()}
        bank, lab, idx, valid = mem.with_batch(rows[lo:hi], labels[lo:hi], index[lo:hi])
        assert all(torch.equal(v, mem.state_dict()[k]) for k, v in before.items())  # searching changes nothing
        mem.enqueue(rows[lo:hi], labels[lo:hi], index[lo:hi])
        for a, b in [(bank, mem.bank), (lab, mem.labels), (idx, mem.index), (valid, mem.valid_mask())]:
            assert torch.equal(a, b)                  # the searched memory is the memory after the enqueue
    first = max(0, 7 - 5)
    assert torch.equal(mem.contents(), rows[first:7])
    assert torch.equal(oldest_first(mem.labels), labels[first:7])
    assert torch.equal(oldest_first(mem.index), index[first:7])
    with pytest.raises(ValueError, match="cannot enqueue"):
        mem.with_batch(torch.zeros(6, 2), torch.zeros(6, dtype=torch.long), torch.zeros(6, dtype=torch.long))


def test_two_slot_pool_reads_the_previous_write():
    init = torch.randn(2, 4, 3)
    cache = EmbeddingCache(init.clone())
    ids = torch.tensor([2, 0])
    seen = []
    for epoch in range(3):
        x = torch.randn(2, 3)
        cache.write_(x, ids)
        seen.append(x)
        prev = cache.before_latest(ids, cache.writes)
        assert torch.equal(prev, init[1, ids] if epoch == 0 else seen[-2]), epoch
    assert cache.writes.tolist() == [3, 0, 3, 0]


def method_on(labels, batch=16, **method_args):
    n = len(labels)
    cfg = TrainConfig(method=method_args.pop("method", "cmsf"), batch_size=batch, width=8, proj_hidden=16,
                      proj_out=8, method_args=method_args)
    data = DataContext(num_classes=int(labels.max()) + 1, image_size=32, mean=(0.5,) * 3, std=(0.25,) * 3,
                       read_images=torch.zeros(n, 3, 32, 32, dtype=torch.uint8).__getitem__, train_labels=labels,
                       classes=[str(c) for c in range(int(labels.max()) + 1)])
    return build_method(cfg, data)


class CodeTranscription:
    """train_cmsf_self.py's step, literally: enqueue u (memory and pool[qidx[i]][i], then flip qidx[i]) before the
    search, w_i = pool[qidx[i]][i], M'[r] = pool[qidx[idx_r]][idx_r], C_i = k' NNs of w_i in M', -5 on C_i, top-k;
    loss = (CMSF + MSF) / 2. Two resolutions: M starts empty, and with epoch1="msf" images written fewer than twice
    have no previous embedding (such rows use MSF, such entries are not in M')."""

    def __init__(self, pool_init, size, k, k_prime, epoch1):
        self.pool = pool_init.tolist()
        self.qidx = [0] * len(self.pool[0])
        self.writes = [0] * len(self.pool[0])
        self.memory = []  # (u, image index), oldest first
        self.size, self.k, self.k_prime, self.epoch1 = size, k, k_prime, epoch1

    def step(self, u, q, ids):
        for row, i in zip(u, ids):
            self.pool[self.qidx[i]][i] = row
            self.qidx[i] = (self.qidx[i] + 1) % 2
            self.writes[i] += 1
            self.memory = (self.memory + [(row, i)])[-self.size:]
        mem, k = self.memory, self.k
        prev = lambda i: self.pool[self.qidx[i]][i]
        has_prev = lambda i: self.epoch1 == "random" or self.writes[i] >= 2
        l_msf = l_cmsf = 0.0
        chosen = []
        for ub, qb, i in zip(u, q, ids):
            du = [dist(ub, m) for m, _ in mem]
            nn = sorted(range(len(mem)), key=lambda j: du[j])[:k]
            S = nn
            if has_prev(i):
                eligible = [j for j, (_, idx) in enumerate(mem) if has_prev(idx)]
                C = sorted(eligible, key=lambda j: dist(prev(i), prev(mem[j][1])))[:self.k_prime]
                S = sorted(range(len(mem)), key=lambda j: du[j] - (5 if j in C else 0))[:k]
            l_msf += sum(dist(qb, mem[j][0]) for j in nn) / k
            l_cmsf += sum(dist(qb, mem[j][0]) for j in S) / k
            chosen.append(sorted(mem[j][1] for j in S))
        return l_cmsf / len(ids), l_msf / len(ids), chosen


@pytest.mark.parametrize("epoch1", ["msf", "random"])
def test_cmsf_self_matches_the_code_transcription(epoch1):
    """Over 3 epochs (12 images, batch 4, M = 8, so M wraps), the method's search on M and the pool as they will be
    after the write equals the code's. The orders keep an image from being in M twice (possible across an epoch
    boundary): both copies would share one M' entry, a tie that the code's topk breaks arbitrarily."""
    n, batch, size = 12, 4, 8
    method = method_on(torch.arange(n) % 3, batch, memory_size=size, k=3, k_prime=3, epoch1=epoch1)
    ref = CodeTranscription(method.cache.pool.double(), size, 3, 3, epoch1)
    gen = torch.Generator().manual_seed(4)
    order = torch.arange(n)
    for epoch in range(3):
        last = set(order[-batch:].tolist())
        order = torch.randperm(n, generator=gen)
        while last & set(order[:batch].tolist()):
            order = torch.randperm(n, generator=gen)
        for s in range(n // batch):
            ids = order[s * batch:(s + 1) * batch]
            u, q = unit(batch, 8, gen=gen).float(), unit(batch, 8, gen=gen).float()
            bank, nbrs, aux = method.search(u, ids, torch.full_like(ids, -1))
            l_cmsf, l_msf = mean_shift_loss(q, bank, nbrs["constrained"]), mean_shift_loss(q, bank, nbrs["msf"])
            method.after_step({}, aux)
            e_cmsf, e_msf, e_chosen = ref.step(u.double().tolist(), q.double().tolist(), ids.tolist())
            assert l_cmsf.item() == pytest.approx(e_cmsf, abs=1e-5) and l_msf.item() == pytest.approx(e_msf, abs=1e-5)
            assert [sorted(method.memory.index[r].tolist()) for r in nbrs["constrained"]] == e_chosen
            if epoch == 0 and epoch1 == "msf":
                assert torch.equal(nbrs["constrained"], nbrs["msf"])  # no previous epoch yet: plain MSF
    assert method.cache.writes.tolist() == [3] * n


@pytest.mark.parametrize("constraint", ["self", "sup", "semi"])
def test_neighbours_and_memory_slots_over_three_epochs(constraint):
    """Driving search/after_step as the trainer does: every query's own (just enqueued) slot is among its
    neighbours; the slots written hold the batch's embeddings, labels and dataset indices; label-constrained
    neighbours share the query's label whenever M holds k valid entries of it."""
    gen = torch.Generator().manual_seed(0)
    n, batch, size, k = 48, 8, 24, 3
    labels = torch.arange(n) % 3
    method = method_on(labels, batch, constraint=constraint, memory_size=size, k=k, label_fraction=0.5)
    checked = 0
    for epoch in range(3):
        order = torch.randperm(n, generator=gen)
        for step in range(n // batch):
            ids = order[step * batch:(step + 1) * batch]
            u = unit(batch, 8, gen=gen).float()
            y = method.batch_labels(u, ids)
            _, neighbours, aux = method.search(u, ids, y)
            slots = (method.memory.ptr + torch.arange(batch)) % size
            own = neighbours["constrained"] == slots.unsqueeze(1)
            assert own.any(1).all(), (epoch, step)
            method.after_step({}, aux)
            mem = method.memory
            assert torch.equal(mem.bank[slots], u) and torch.equal(mem.labels[slots], y)
            assert torch.equal(mem.index[slots], ids)
            valid = mem.index >= 0
            for i in range(batch):
                if y[i] >= 0 and int((valid & (mem.labels == y[i])).sum()) >= k:
                    assert (mem.labels[neighbours["constrained"][i]] == y[i]).all(), (epoch, step, i)
                    checked += 1
            if constraint == "sup":
                assert torch.equal(y, labels[ids])
            if constraint == "semi":  # labelled images always carry their label
                known = method.known_labels[ids] >= 0
                assert torch.equal(y[known], labels[ids][known])
    assert (checked == 0) if constraint == "self" else (checked > 40)  # self: no labels, every y = -1


def test_semi_head_retraining_schedule_and_data():
    """Rounds at mid-epoch (global batch < 1024) and at every epoch end, never at step 0; each round reads only
    the latest embeddings of the labelled images seen so far, in head_batch batches for head_epochs epochs."""
    labels = torch.arange(64) % 4
    method = method_on(labels, 8, constraint="semi", memory_size=32, k=3, label_fraction=0.25, head_batch=3,
                       head_epochs=2)
    rounds = []
    method.retrain_head = rounds.append   # an instance attribute over the method, removed below
    for step in range(3 * 8):
        method.begin_step(step, 8)
    assert rounds == [4, 8, 12, 16, 20]
    del method.retrain_head

    labelled = method.labelled.tolist()
    assert len(labelled) == 16
    seen = torch.tensor(labelled[:7])             # 7 labelled and 5 unlabelled images written so far
    unlabelled = torch.tensor([i for i in range(64) if i not in labelled][:5])
    gen = torch.Generator().manual_seed(1)
    method.cache.write_(unit(12, 8, gen=gen).float(), torch.cat([seen, unlabelled]))
    inputs = []
    hook = method.head[0].register_forward_hook(lambda mod, args, out: inputs.append(args[0].detach().clone()))
    before = method.head[0].weight.clone()
    method.retrain_head(8)
    hook.remove()
    assert [len(x) for x in inputs] == [3, 3] * 2           # 7 // 3 full batches, 2 epochs
    allowed = method.cache.pool[0, seen]
    for x in inputs:
        for row in x:
            assert (row == allowed).all(1).any()             # only labelled images, seen ones
    assert not torch.equal(before, method.head[0].weight) and not method.head.training
    assert not any(p.requires_grad for p in method.head.parameters())


def test_semi_split_validation_and_registry():
    labels = torch.arange(200) % 4
    split = labelled_fraction(labels, 0.1, seed=7)
    assert torch.equal(split, labelled_fraction(labels, 0.1, seed=7)) and not torch.equal(split, labelled_fraction(
        labels, 0.1, seed=8))
    assert torch.bincount(labels[split]).tolist() == [5, 5, 5, 5]
    method = method_on(labels, constraint="semi", memory_size=64)  # run seed 0
    assert method.k == 10 and method.run_files()["labelled.json"]["labelled_indices"] == torch.arange(200)[
        method.known_labels >= 0].tolist() == labelled_fraction(labels, 0.1, seed=0).tolist()
    assert not any(p.requires_grad for p in method.head.parameters())  # not in the trainer's optimiser
    assert method.train().head.training is False
    msf = method_on(labels, method="msf", memory_size=64)
    assert msf.params.constraint == "none" and msf.k == 5 and msf.cache is None
    with pytest.raises(ValueError, match="training-set size"):
        method_on(labels, memory_size=256)
    with pytest.raises(ValueError, match="k=5 must lie"):
        method_on(labels, batch=4, memory_size=64, k=5)
    with pytest.raises(ValueError, match="k_prime=65 must lie"):
        method_on(labels, memory_size=64, k_prime=65)
    with pytest.raises(ValueError, match="constraint must be"):
        method_on(labels, constraint="pseudo", memory_size=64)


# ---- real CIFAR-10, CPU --------------------------------------------------------------------------------------
def tiny(tmp_path, method="cmsf", **kw):
    base = dict(method=method, dataset="cifar10", subset=128, batch_size=32, epochs=3, width=8, proj_hidden=64,
                proj_out=32, warmup_epochs=0, device="cpu", run_dir=str(tmp_path / method), progress=False,
                eval_knn=False, log_every=1, method_args={"memory_size": 64})
    base.update(kw)
    return TrainConfig(**base)


@pytest.mark.slow
@pytest.mark.parametrize("method,constraint", [("msf", None), ("cmsf", "self"), ("cmsf", "semi")])
def test_loss_finite_and_decreasing(tmp_path, cifar_root, method, constraint):
    args = {"memory_size": 64, **({"constraint": constraint} if constraint else {})}
    result = train(tiny(tmp_path, method, data_root=cifar_root, method_args=args))
    losses = [row["loss"] for row in result.metrics]
    assert len(losses) == 12 and all(math.isfinite(v) for v in losses)
    assert sum(losses[-4:]) / 4 < sum(losses[:4]) / 4, losses
    if constraint == "self":  # epoch 1 is MSF; later the constrained term differs
        rows = result.metrics
        assert all(r["cmsf"] == r["msf"] for r in rows[:4]) and any(r["cmsf"] != r["msf"] for r in rows[4:])
    assert int(result.method.memory.filled) == 64


@pytest.mark.slow
@pytest.mark.parametrize("constraint", ["self", "semi"])
def test_checkpoint_and_resume_continue_with_identical_state(tmp_path, cifar_root, constraint):
    """6 steps straight == 3 steps, checkpoint, resume, 3 more (4 steps per epoch: the pool has previous-epoch
    entries by then; semi retrains its head at steps 2 and 4, either side of the checkpoint)."""
    args = {"memory_size": 64, "constraint": constraint}
    straight = Trainer(tiny(tmp_path / "a", data_root=cifar_root, max_steps=6, ckpt_every=3, method_args=args)).fit()
    Trainer(tiny(tmp_path / "b", data_root=cifar_root, max_steps=3, ckpt_every=3, method_args=args)).fit()
    resumed_trainer = Trainer(tiny(tmp_path / "b", data_root=cifar_root, max_steps=6, ckpt_every=3,
                                   method_args=args))
    assert resumed_trainer.step == 3
    resumed = resumed_trainer.fit()
    a, b = straight.method.state_dict(), resumed.method.state_dict()
    assert a.keys() == b.keys() and {"memory.labels", "memory.index", "cache.pool", "cache.writes"} <= a.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k   # networks, memory (+ labels, indices), pool, head
    assert [r["loss"] for r in straight.metrics[3:]] == [r["loss"] for r in resumed.metrics]
    if constraint == "semi":
        assert a["head.1.running_mean"].abs().sum() > 0  # the head was retrained
        assert (a["memory.labels"] >= 0).any()


@pytest.mark.slow
def test_logged_momentum_is_the_constant_one(tmp_path, cifar_root):
    from osessl_core.config import TrainConfig
    from osessl_core.engine import train
    cfg = TrainConfig(method="cmsf", dataset="cifar10", data_root=cifar_root, subset=64, batch_size=32, epochs=1,
                      width=8, proj_hidden=32, proj_out=16, device="cpu", run_dir=str(tmp_path / "m"), progress=False,
                      eval_knn=False, log_every=1, method_args={"memory_size": 64})
    assert [row["momentum"] for row in train(cfg).metrics] == [0.99, 0.99]
