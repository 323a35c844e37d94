"""The method contract (methods/base.py, `Method`'s docstring) holds for every registered method: the typed
context, the view record, the declared view pipelines (so a streamed loader can cut the crops), the batch
sharding, the EMA pairs, the loss/updates split, the evaluated network and the run files."""
import inspect
import json

import pytest
import torch
from torch import nn

from osessl_core.config import TrainConfig
from osessl_core.data.augment import ViewAugment
from osessl_core.data.imagefolder import train_views, view_uniforms
from osessl_core.methods import METHODS, Batch, DataContext, StepRandom, Views, build_method

from test_resume_every_method import SMALL_ARGS

N, B = 32, 8


def data_context() -> DataContext:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (N, 3, 32, 32), dtype=torch.uint8, generator=g)
    labels = torch.arange(N) % 4
    return DataContext(num_classes=4, image_size=32, mean=(0.5,) * 3, std=(0.25,) * 3, train_labels=labels,
                       classes=list("abcd"), read_images=images.__getitem__), images


def build(name: str, world_size: int = 1, rank: int = 0, batch: int = B, **args):
    data, images = data_context()
    cfg = TrainConfig(method=name, batch_size=batch, width=8, proj_hidden=16, proj_out=8,
                      method_args={**SMALL_ARGS.get(name, {}), **args})
    torch.manual_seed(0)
    return build_method(cfg, data, world_size=world_size, rank=rank), images


class RecordingBatch(Batch):
    def view(self, augment, generator):
        self.used = getattr(self, "used", []) + [augment]
        return super().view(augment, generator)


pytestmark = pytest.mark.usefixtures("single_thread")  # tiny tensors (conftest.py); restored afterwards


@pytest.fixture(scope="module", params=sorted(METHODS))
def built(request):
    method, images = build(request.param)
    batch = RecordingBatch(torch.arange(B), B, 0, images=images[:B])
    views = method.make_views(batch, StepRandom.create(0, torch.device("cpu")))
    return request.param, method, images, batch, views


def test_methods_read_the_context_not_the_process_group(built):
    name, method, *_ = built
    source = inspect.getsource(inspect.getmodule(type(method)))
    for forbidden in ("world_size()", "rank()", "TrainConfig("):
        assert forbidden not in source, f"{name} calls {forbidden}"


def test_view_record_keys_and_shapes(built):
    name, method, _, batch, views = built
    assert isinstance(views, Views)
    assert views.images and all(v.dtype == torch.float32 and v.dim() == 4 and v.shape[1] == 3
                                for v in views.images.values())
    assert all(isinstance(v, torch.Tensor) and not v.requires_grad for v in (*views.draws.values(),
                                                                           *views.features.values()))
    assert views.ids is None or torch.equal(views.ids, batch.ids)


def test_views_follow_the_declared_pipelines(built):
    """A streamed loader cuts one crop per view_pipelines() entry, in that order: make_views must take them so."""
    name, method, _, batch, _ = built
    declared = method.view_pipelines()
    assert all(isinstance(v, ViewAugment) for v in declared)
    assert [id(v) for v in batch.used] == [id(v) for v in declared], name


def test_views_from_loader_crops(built):
    """The same method runs on crops cut by the loader (data/imagefolder.train_views) of 48 px images."""
    name, method, images, *_ = built
    pipelines = method.view_pipelines()
    big = torch.nn.functional.interpolate(images[:B].float(), size=48).to(torch.uint8)
    cut = [train_views(img, pipelines, view_uniforms(0, 0, i, len(pipelines))) for i, img in enumerate(big)]
    crops = [torch.stack([c[k] for c in cut]) for k in range(len(pipelines))]
    batch = Batch(torch.arange(B), B, 0, crops=crops, pipelines=pipelines)
    views = method.make_views(batch, StepRandom.create(0, torch.device("cpu")))
    assert batch.taken == len(pipelines)
    assert all(v.shape[-1] == 32 for v in views.images.values())


def test_a_rank_draws_its_share_of_the_global_batch(built):
    """Rank 1 of 2 gets rows [B, 2B) of what one rank draws for the whole 2B batch (views and per-row draws)."""
    name, *_ = built
    args = {"mu": 0.0} if name == "osessl" else {}  # mixing gathers the other rank's views (process group)
    single, images = build(name, 1, 0, batch=2 * B, **args)
    whole = images[:2 * B]
    full = single.make_views(Batch.of(whole), StepRandom.create(0, torch.device("cpu")))
    second, _ = build(name, 2, 1, **args)
    part = second.make_views(Batch(torch.arange(B, 2 * B), 2 * B, B, images=whole[B:]),
                             StepRandom.create(0, torch.device("cpu")))
    for k, v in part.images.items():
        if k == "exemplars":
            continue  # exemplars are sharded by their own count (shard_bounds)
        ref = full.images[k]
        if ref.shape[0] == 4 * B:  # two views stacked view-major (SOP's "global")
            ref = torch.cat([ref[B:2 * B], ref[3 * B:]])
        else:
            ref = ref[B:]
        torch.testing.assert_close(v, ref, msg=f"{name} {k}")


def test_momentum_pairs_and_loss_split(built):
    name, method, _, _, views = built
    names = {id(m): n for n, m in method.named_modules()}
    for online, target in method.momentum_pairs():
        assert id(online) in names and id(target) in names and online is not target
        assert [p.shape for p in online.parameters()] == [p.shape for p in target.parameters()]
        assert not any(p.requires_grad for p in target.parameters())
    assert 0 < method.momentum(0.99) <= 1
    terms, updates = method.loss_terms(views)
    assert terms["loss"].dim() == 0 and terms["loss"].requires_grad
    assert all(v.dim() == 0 and not v.requires_grad for k, v in terms.items() if k != "loss")
    assert all(not v.requires_grad for v in updates.values())
    method.after_step(views, updates)


def test_evaluated_network_and_run_files(built):
    name, method, *_ = built
    encoder, projector = method.eval_encoder(), method.eval_projector()
    modules = [m for m in method.modules()]
    assert any(encoder is m for m in modules) and any(projector is m for m in modules)
    assert isinstance(encoder.out_dim, int) and isinstance(projector, nn.Sequential)
    assert encoder(torch.zeros(2, 3, 32, 32)).shape == (2, encoder.out_dim)
    json.dumps(method.run_files())
    assert all(n.endswith(".json") for n in method.run_files())
