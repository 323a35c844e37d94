"""SOP: every loss piece against a literal float64 loop transcription (as resolved in docs/decisions.md#sop),
the BEiT masks against iBOT's loop, the ViT, the memories (FIFO, resume) and short real-CIFAR runs."""
import math

import pytest
import torch
import torch.nn.functional as F

from osessl_core.config import TrainConfig
from osessl_core.data.masking import MASK_ATTEMPTS, MASK_ROUNDS, MASK_UNIFORMS, block_masks
from osessl_core.engine import Trainer, train
from osessl_core.losses import (build_sops, sop_cls_loss, sop_cls_term, sop_patch_loss, sop_patch_term,
                                sop_probabilities)
from osessl_core.methods import Batch, DataContext, StepRandom, build_method
from osessl_core.models import CifarViT, build_encoder

torch.manual_seed(0)


def unit(*shape):
    return F.normalize(torch.randn(*shape, dtype=torch.float64), dim=-1)


def close(a, b, tol=1e-9):
    a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    assert torch.allclose(a, b, atol=tol, rtol=tol), (a, b)


def dot(a, b):
    return sum(x * y for x, y in zip(a, b))


# ---- literal transcriptions (docs/decisions.md#d-sop-1 to #d-sop-4) -------------------------------------------
def literal_sops(memory, perm, K, k, eps):
    """Members (anchor-major: k nearest pool rows by cosine, then the anchor) and Y as nested lists."""
    mem, perm = memory.tolist(), perm.tolist()
    anchors, pool = perm[:K], perm[K:]
    members, scores = [], []
    for a in anchors:
        ranked = sorted(pool, key=lambda j: -dot(mem[a], mem[j]))[:k]
        members.append(ranked + [a])
        scores.append([dot(mem[a], mem[j]) for j in ranked] + [1 - eps])
    Y = []
    for i in range(K):
        for s in scores[i]:
            row = [s if c == i else (1 - s) / (K - 1) for c in range(K)]
            Y.append([y / sum(row) for y in row])
    return members, Y


def literal_probs(u, D, Y, tau):
    """P_c = sum_r softmax_r(<u, D_r> / tau) Y_rc, for one vector u."""
    logits = [dot(u, d) / tau for d in D]
    m = max(logits)
    e = [math.exp(l - m) for l in logits]
    sigma = [x / sum(e) for x in e]
    return [sum(sigma[r] * Y[r][c] for r in range(len(D))) for c in range(len(Y[0]))]


def literal_ce(q, p):
    return -sum(qc * math.log(pc) for qc, pc in zip(q, p))


@pytest.mark.parametrize("K,k", [(4, 3), (5, 0)])
def test_build_sops_literal(K, k):
    memory, perm = unit(23, 6), torch.randperm(23)
    D, Y, members = build_sops(memory, perm, K, k, smoothing=0.1)
    lit_members, lit_Y = literal_sops(memory, perm, K, k, 0.1)
    assert members.tolist() == lit_members
    close(D, memory[torch.tensor(lit_members).reshape(-1)])
    close(Y, lit_Y)
    close(Y.sum(1), torch.ones(K * (k + 1)))
    if k == 0:  # SOP-MIM: plain label smoothing 0.9 I + 0.1 / (K-1) (1 - I)
        eye = torch.eye(K, dtype=torch.float64)
        close(Y, 0.9 * eye + 0.1 / (K - 1) * (1 - eye))


def test_anchors_are_never_support_embeddings():
    # The anchors form a tight cluster, so a kNN over the whole memory would pick anchors (and the anchor itself).
    n, K, k = 40, 6, 5
    perm = torch.randperm(n)
    memory = unit(n, 8)
    memory[perm[:K]] = F.normalize(memory[perm[0]] + 0.01 * torch.randn(K, 8, dtype=torch.float64), dim=1)
    _, _, members = build_sops(memory, perm, K, k)
    anchors = set(perm[:K].tolist())
    assert not anchors & set(members[:, :k].flatten().tolist())
    assert members[:, k].tolist() == perm[:K].tolist()


def test_probabilities_literal():
    memory, perm = unit(20, 5), torch.randperm(20)
    D, Y, _ = build_sops(memory, perm, 4, 2)
    u = unit(3, 5)
    for tau in (0.1, 0.04):
        close(sop_probabilities(u, D, Y, tau), [literal_probs(x, D.tolist(), Y.tolist(), tau) for x in u.tolist()])
        close(sop_probabilities(u, D, Y, tau).sum(1), torch.ones(3))


def test_cls_loss_literal_pairs_v_ne_t():
    # Three student views (two global + one local) against the two teacher (global) views: 4 pairs.
    V, B, d = 3, 4, 5
    memory, perm = unit(30, d), torch.randperm(30)
    D, Y, _ = build_sops(memory, perm, 5, 3)
    zs, zt = unit(V, B, d), unit(2, B, d)
    ps, pt = sop_probabilities(zs, D, Y, 0.1), sop_probabilities(zt, D, Y, 0.04)
    Dl, Yl = D.tolist(), Y.tolist()
    pairs = []
    for t in range(2):
        for v in range(V):
            if v != t:
                pairs.append(sum(literal_ce(literal_probs(zt[t, b].tolist(), Dl, Yl, 0.04),
                                            literal_probs(zs[v, b].tolist(), Dl, Yl, 0.1)) for b in range(B)) / B)
    assert len(pairs) == 2 * V - 2
    close(sop_cls_loss(ps, pt), sum(pairs) / len(pairs))


def test_cls_term_averages_tasks_and_only_the_student_gets_gradient():
    B, d, n = 4, 5, 30
    memory = unit(n, d)
    perms = torch.stack([torch.randperm(n) for _ in range(3)])
    zs, zt = unit(2, B, d).requires_grad_(), unit(2, B, d).requires_grad_()
    loss = sop_cls_term(zs, zt, memory, perms, num_anchors=5, k=3)
    expected = 0.0
    for perm in perms:
        members, Yl = literal_sops(memory, perm, 5, 3, 0.1)
        Dl = memory[torch.tensor(members).reshape(-1)].tolist()
        pairs = [sum(literal_ce(literal_probs(zt[t, b].tolist(), Dl, Yl, 0.04),
                                literal_probs(zs[1 - t, b].tolist(), Dl, Yl, 0.1)) for b in range(B)) / B
                 for t in range(2)]
        expected += sum(pairs) / 2 / len(perms)
    close(loss, expected)
    loss.backward()
    assert zs.grad.abs().sum() > 0 and zt.grad is None


def test_patch_loss_literal_masked_positions_only():
    G, B, L, d, K = 2, 3, 5, 4, 6
    memory, perm = unit(16, d), torch.randperm(16)
    D, Y, _ = build_sops(memory, perm, K, 0)
    zs, zt = unit(G, B, L, d), unit(G, B, L, d)
    mask = torch.rand(G, B, L) < 0.5
    mask[0, 1] = False                          # an image with nothing masked contributes 0 (max(1, sum m))
    ps, pt = sop_probabilities(zs, D, Y, 0.1), sop_probabilities(zt, D, Y, 0.04)
    Dl, Yl = D.tolist(), Y.tolist()
    per_view = []
    for g in range(G):
        per_image = []
        for b in range(B):
            m = mask[g, b].tolist()
            tot = sum(literal_ce(literal_probs(zt[g, b, l].tolist(), Dl, Yl, 0.04),
                                 literal_probs(zs[g, b, l].tolist(), Dl, Yl, 0.1)) for l in range(L) if m[l])
            per_image.append(tot / max(1, sum(m)))
        per_view.append(sum(per_image) / B)
    close(sop_patch_loss(ps, pt, mask), sum(per_view) / G)
    perms = perm.unsqueeze(0)
    close(sop_patch_term(zs, zt, mask, memory, perms, K), sum(per_view) / G)


# ---- BEiT blockwise masks ------------------------------------------------------------------------------------
def literal_block_mask(u, grid, ratio=0.3, aspect=0.3):
    """iBOT's ImageFolderMask (pred_shape='block') for one image, its random.* calls replaced by the uniforms
    u[round][0..3][attempt] (uniform(a, b) = a + (b - a) U, randint(0, n) = floor(U (n + 1)))."""
    H = W = grid
    high = ratio * H * W
    log_aspect = (math.log(aspect), math.log(1 / aspect))
    mask = [[False] * W for _ in range(H)]
    mask_count, rnd = 0, 0
    while mask_count < high:
        max_mask_patches = high - mask_count
        delta = 0
        for attempt in range(MASK_ATTEMPTS):
            a_u, r_u, t_u, l_u = (u[rnd][i][attempt] for i in range(4))
            low = (min(H, W) // 3) ** 2
            target_area = low + (max_mask_patches - low) * a_u
            aspect_ratio = math.exp(log_aspect[0] + (log_aspect[1] - log_aspect[0]) * r_u)
            h = int(round(math.sqrt(target_area * aspect_ratio)))
            w = int(round(math.sqrt(target_area / aspect_ratio)))
            if w < W and h < H:
                top, left = math.floor(t_u * (H - h + 1)), math.floor(l_u * (W - w + 1))
                num_masked = sum(mask[i][j] for i in range(top, top + h) for j in range(left, left + w))
                if 0 < h * w - num_masked <= max_mask_patches:
                    for i in range(top, top + h):
                        for j in range(left, left + w):
                            if not mask[i][j]:
                                mask[i][j] = True
                                delta += 1
            if delta > 0:
                break
        rnd += 1
        if delta == 0:
            break
        mask_count += delta
    assert rnd <= MASK_ROUNDS
    return [x for row in mask for x in row]


def test_block_masks_match_ibot_loop():
    u = torch.rand(200, MASK_UNIFORMS, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    masks = block_masks(u, 8)
    uu = u.view(200, MASK_ROUNDS, 4, MASK_ATTEMPTS).tolist()
    assert masks.tolist() == [literal_block_mask(x, 8) for x in uu]
    counts = masks.sum(1)
    assert counts.max() <= 19 and counts.float().mean() > 18  # pred_ratio 0.3 of 64 patches, never more


# ---- ViT ---------------------------------------------------------------------------------------------------
def test_vit_tokens_mask_token_and_registry():
    vit = build_encoder("vit_tiny", width=8, zero_pad=True, vit_depth=1)
    assert isinstance(vit, CifarViT) and vit.out_dim == 192 and vit.grid == 8
    assert build_encoder("vit_small", vit_depth=1).out_dim == 384
    assert len(build_encoder("vit_tiny").encoder.layers) == 12
    x = torch.randn(2, 3, 32, 32)
    tokens = vit.forward_tokens(x)
    assert tokens.shape == (2, 65, 192)
    torch.testing.assert_close(vit(x), tokens[:, 0])
    none = torch.zeros(2, 64, dtype=torch.bool)
    torch.testing.assert_close(vit.forward_tokens(x, none), tokens)
    mask = none.clone()
    mask[0, :10] = True
    out = vit.forward_tokens(x, mask)
    torch.testing.assert_close(out[1], tokens[1])  # only the masked image changes
    assert not torch.allclose(out[0], tokens[0])
    out.sum().backward()
    assert vit.mask_token.grad.abs().sum() > 0
    vit.to(memory_format=torch.channels_last)  # the trainer's fast path
    torch.testing.assert_close(vit(x.contiguous(memory_format=torch.channels_last)), tokens[:, 0],
                               atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="vit_tiny"):
        build_encoder("vit_huge")


# ---- the method: memories, validation ------------------------------------------------------------------------
def small_method(arch="vit_tiny", **method_args):
    cfg = TrainConfig(method="sop", arch=arch, width=8, proj_hidden=32, proj_out=16,
                      method_args={"memory_size": 24, "anchors": 3, "k": 2, "patch_memory_size": 24,
                                   "patch_anchors": 4, "vit_depth": 1, **method_args})
    images = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8)
    data = DataContext(num_classes=10, image_size=32, mean=(0.5,) * 3, std=(0.25,) * 3, read_images=images.__getitem__,
                       train_labels=torch.zeros(16, dtype=torch.long), classes=[str(i) for i in range(10)])
    return build_method(cfg, data), images


@torch.no_grad()
def unit_tokens(encoder, head, x, mask=None):
    """Every token's unit embedding [views*n, tokens, d]: the encoder's tokens through the head, L2-normalised."""
    tokens = encoder.forward_tokens(x, mask)
    return F.normalize(head(tokens.flatten(0, 1)), dim=-1, eps=1e-6).view(*tokens.shape[:2], -1)


def test_memories_start_random_unit_and_fill_fifo_with_view_2_teacher_embeddings():
    method, images = small_method()
    assert method.mim and method.memory.bank.shape == (24, 16) and int(method.memory.filled) == 24
    close(method.memory.bank.norm(dim=1), torch.ones(24), 1e-6)
    initial = method.memory.bank.clone()
    rng = StepRandom.create(0, torch.device("cpu"))
    written = []
    for step in range(4):  # batches of 8 into memories of 24: the 4th step overwrites the 1st
        views = method.make_views(Batch.of(images[8 * (step % 2):8 * (step % 2) + 8], torch.arange(8)), rng)
        _, aux = method.loss_terms(views)
        # aux: the teacher's view-2 [CLS] and the token at patch_pos of view 2 (both views: one BN batch, as in
        # training)
        z = unit_tokens(method.teacher_encoder, method.teacher_head, views.images["global"])[8:]
        torch.testing.assert_close(aux["cls"], z[:, 0])
        torch.testing.assert_close(aux["patch"], z[torch.arange(8), 1 + views.draws["patch_pos"]])
        method.after_step(views, aux)
        written.append(aux)
        if step == 1:
            torch.testing.assert_close(method.memory.bank[16:], initial[16:])  # not reached yet
    for mem, key in ((method.memory, "cls"), (method.patch_memory, "patch")):
        torch.testing.assert_close(mem.bank[:8], written[3][key])
        torch.testing.assert_close(mem.bank[8:16], written[1][key])
        torch.testing.assert_close(mem.bank[16:], written[2][key])
        assert int(mem.ptr) == 8


def test_views_anchor_permutations_and_masks():
    method, images = small_method()
    views = method.make_views(Batch.of(images[:8], torch.arange(8)), StepRandom.create(0, torch.device("cpu")))
    assert views.images["global"].shape == (16, 3, 32, 32) and views.draws["mask_u"].shape == (16, MASK_UNIFORMS)
    assert views.draws["anchors"].shape == (4, 24) and views.draws["patch_anchors"].shape == (1, 24)
    assert all(sorted(p.tolist()) == list(range(24)) for p in views.draws["anchors"])
    assert not torch.equal(views.draws["anchors"][0], views.draws["anchors"][1])  # independent tasks
    again = method.make_views(Batch.of(images[:8], torch.arange(8)), StepRandom.create(0, torch.device("cpu")))
    for group in ("images", "draws"):  # a function of the run's generator only
        ours, theirs = getattr(views, group), getattr(again, group)
        assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_method_objective_literal_student_masked_teacher_unmasked():
    """The assembled SOP objective: the student sees the masked global views, the teacher the same views unmasked;
    CLS pairs v != t at tau_s = 0.1 / tau_t = 0.04 over every anchor task, plus the masked-patch term."""
    method, images = small_method()
    method = method.double()
    views = method.make_views(Batch.of(images[:8], torch.arange(8)), StepRandom.create(0, torch.device("cpu")))
    views = views.to(torch.float64)
    terms, _ = method.loss_terms(views)
    n, grid = 8, 8
    mask = block_masks(views.draws["mask_u"], grid, 0.3)
    assert mask.any()

    shape = (2, n, 1 + grid * grid, -1)   # [view][image][token][dim]
    zs = unit_tokens(method.encoder, method.head, views.images["global"], mask).view(shape).tolist()
    zt = unit_tokens(method.teacher_encoder, method.teacher_head, views.images["global"]).view(shape).tolist()
    cls_tasks = []
    for perm in views.draws["anchors"]:
        members, Y = literal_sops(method.memory.bank, perm, 3, 2, 0.1)
        D = method.memory.bank[torch.tensor(members).reshape(-1)].tolist()
        pairs = [sum(literal_ce(literal_probs(zt[t][b][0], D, Y, 0.04), literal_probs(zs[1 - t][b][0], D, Y, 0.1))
                     for b in range(n)) / n for t in range(2)]
        cls_tasks.append(sum(pairs) / 2)
    members, Y = literal_sops(method.patch_memory.bank, views.draws["patch_anchors"][0], 4, 0, 0.1)
    D = method.patch_memory.bank[torch.tensor(members).reshape(-1)].tolist()
    m = mask.view(2, n, grid * grid).tolist()
    per_image = []
    for v in range(2):
        for b in range(n):
            ce = [literal_ce(literal_probs(zt[v][b][1 + p], D, Y, 0.04), literal_probs(zs[v][b][1 + p], D, Y, 0.1))
                  for p in range(grid * grid) if m[v][b][p]]
            per_image.append(sum(ce) / max(1, len(ce)))
    cls, patch = sum(cls_tasks) / len(cls_tasks), sum(per_image) / len(per_image)
    close(terms["cls"], cls, 1e-7)
    close(terms["patch"], patch, 1e-7)
    close(terms["loss"], cls + patch, 1e-7)
    terms["loss"].backward()
    assert method.encoder.mask_token.grad.abs().sum() > 0
    assert all(p.grad is None for p in method.teacher_encoder.parameters())


def test_parameter_validation():
    with pytest.raises(ValueError, match="patch tokens"):
        small_method("resnet18", lambda_patch=1.0)
    with pytest.raises(ValueError, match="anchors"):
        small_method("resnet18", anchors=20, k=8)
    method, _ = small_method("resnet18")
    assert not method.mim and not hasattr(method, "patch_memory")
    cls_only, _ = small_method("vit_tiny", lambda_patch=0.0)
    assert not cls_only.mim and not cls_only.encoder.mask_token.requires_grad
    # The notebooks' smoke sizes: memory 64 -> K = 64 // 16 = 4 anchors.
    smoke, _ = small_method("resnet18", memory_size=64, anchors=None, k=8)
    assert smoke.num_anchors == 4


# ---- training on real CIFAR-10 -------------------------------------------------------------------------------
def tiny(tmp_path, name, **kw):
    base = dict(method="sop", dataset="cifar10", subset=128, batch_size=32, epochs=2, width=8, proj_hidden=64,
                proj_out=32, warmup_epochs=0, device="cpu", run_dir=str(tmp_path / name), progress=False,
                eval_knn=False, log_every=1, method_args={"memory_size": 64})
    base.update(kw)
    return TrainConfig(**base)


@pytest.mark.slow
def test_resnet_cls_only_loss_decreases(tmp_path, cifar_root):
    # With the default BN-free head, a width-8 ResNet's embeddings start nearly collinear (pairwise cosine ~0.85:
    # pooled ReLU features share a large mean), the memory fills with them and the SOP targets stay near uniform
    # (loss ~ log K) for far longer than 40 CPU steps; the head's BN (docs/decisions.md#d-sop-6) spreads them from
    # step 0.
    cfg = tiny(tmp_path, "r18", data_root=cifar_root, epochs=10, base_lr=0.05,
               method_args={"memory_size": 128, "anchors": 32, "k": 4})  # the default head (with BN)
    losses = [row["loss"] for row in train(cfg).metrics]
    assert len(losses) == 40 and all(math.isfinite(x) for x in losses)
    assert sum(losses[-8:]) / 8 < sum(losses[:8]) / 8, losses


VIT = dict(arch="vit_tiny", method_args={"memory_size": 64, "patch_memory_size": 64, "vit_depth": 1})


@pytest.mark.slow
def test_vit_with_mim_resumes_with_identical_state(tmp_path, cifar_root):
    straight = Trainer(tiny(tmp_path / "a", "vit", data_root=cifar_root, max_steps=4, ckpt_every=2, **VIT)).fit()
    assert {"loss", "cls", "patch"} <= set(straight.metrics[-1])
    assert all(math.isfinite(row["loss"]) and row["patch"] > 0 for row in straight.metrics)
    Trainer(tiny(tmp_path / "b", "vit", data_root=cifar_root, max_steps=2, ckpt_every=2, **VIT)).fit()
    resumed_trainer = Trainer(tiny(tmp_path / "b", "vit", data_root=cifar_root, max_steps=4, ckpt_every=2, **VIT))
    assert resumed_trainer.step == 2
    resumed = resumed_trainer.fit()
    a, b = straight.method.state_dict(), resumed.method.state_dict()
    assert a.keys() == b.keys() and {"memory.bank", "memory.ptr", "patch_memory.bank"} <= set(a)
    for k in a:
        assert torch.equal(a[k], b[k]), k  # student, teacher, both memories and their pointers
