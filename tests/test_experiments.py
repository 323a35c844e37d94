"""osessl_core.experiments: the helpers that keep the notebooks thin."""
import csv
import json
import math
import re
from dataclasses import replace

import pytest
import torch

from osessl_core import experiments as ex
from osessl_core.config import TrainConfig
from osessl_core.data import ImageDataset, load_dataset
from osessl_core.data.exemplars import labelled_fraction
from osessl_core.engine import TrainResult
from osessl_core.provenance import REPO_ROOT


# ---------------------------------------------------------------------------------------------- configs and paths

def test_train_config_smoke_and_full():
    full = ex.train_config(False, "osessl")
    assert full == TrainConfig(method="osessl")  # the paper recipe is TrainConfig's defaults
    smoke = ex.train_config(True, "osessl", epochs=None, width=None)  # None means "the budget's value"
    for k, v in ex.SMOKE_BUDGET.items():
        assert getattr(smoke, k) == v
    assert smoke.method_args == {"memory_size": 64}
    assert ex.train_config(True, "resa").method_args == {}  # ReSA has no memory bank
    cfg = ex.train_config(True, "osessl", {"k": 2, "memory_size": 128}, epochs=3, eval_linear=True)
    assert cfg.epochs == 3 and cfg.eval_linear and cfg.method_args == {"memory_size": 128, "k": 2}
    with pytest.raises(ValueError, match="unknown method"):
        ex.train_config(True, "nosuch")


def test_config_key_ignores_execution_fields():
    cfg = ex.train_config(True, "osessl")
    key = ex.config_key(cfg)
    same = TrainConfig(**{**cfg.to_dict(), "device": "cuda", "max_steps": 3, "eval_linear": True,
                          "linear_epochs": 9, "run_dir": "elsewhere", "data_root": "/x"})
    assert ex.config_key(same) == key
    assert ex.config_key(TrainConfig(**{**cfg.to_dict(), "width": 16})) != key
    assert ex.config_key(TrainConfig(**{**cfg.to_dict(), "method_args": {"k": 2}})) != key
    folder = TrainConfig(**{**cfg.to_dict(), "dataset": "imagefolder"})
    assert ex.config_key(folder) != ex.config_key(replace(folder, data_root="/other"))  # the folder is the data
    d = ex.run_dir_for(cfg, "/tmp/runs", "cifar10-k=2 a/b")
    assert d.parent.as_posix() == "/tmp/runs" and d.name == f"cifar10-k=2_a_b-{key}"


def test_resolve_path_is_relative_to_the_repo():
    assert ex.resolve_path("results/x") == REPO_ROOT / "results" / "x"
    assert ex.resolve_path("/abs/x").as_posix() == "/abs/x"
    assert ex.default_data_root() == REPO_ROOT.parent / "shared" / "data"


# ---------------------------------------------------------------------------------------------- result files

def test_write_results_json_csv_provenance(tmp_path):
    rows = [{"dataset": "cifar10", "row": "k=2", "linear_top1": 12.5, "method_args": {"k": 2}},
            {"dataset": "cifar10", "row": "k=4", "linear_top1": torch.tensor(13.0), "knn_top1": 20.0}]
    paths = ex.write_results(tmp_path, "t", rows, {"note": "x"}, config={"epochs": 1}, seed=3,
                             data_source="/data", wall_seconds=1.5)
    data = json.loads(paths["json"].read_text())
    assert data["rows"][1]["linear_top1"] == 13.0 and data["note"] == "x"
    assert data["seed"] == 3 and data["config"] == {"epochs": 1} and data["wall_seconds"] == 1.5
    assert data["data_source"] == "/data"
    assert {"git_sha", "device", "torch", "python"} <= set(data["provenance"])
    with open(paths["csv"]) as f:
        table = list(csv.DictReader(f))
    assert [r["row"] for r in table] == ["k=2", "k=4"]
    assert json.loads(table[0]["method_args"]) == {"k": 2} and table[0]["knn_top1"] == ""
    with pytest.raises(ValueError, match="non-finite"):
        ex.write_results(tmp_path, "bad", [{"x": math.nan}])


def test_paper_numbers_and_differences():
    t1 = ex.PAPER["table1"]
    assert t1["cifar10"]["resa"] == {"linear_top1": 93.53, "knn_top1": 93.02}
    assert t1["cifar10"]["osessl"] == {"linear_top1": 95.19, "knn_top1": 94.20}
    assert t1["cifar100"]["resa"] == {"linear_top1": 72.21, "knn_top1": 66.83}
    assert t1["cifar100"]["osessl"] == {"linear_top1": 75.47, "knn_top1": 69.89}
    assert ex.PAPER["table7"]["cifar100"]["k=16"] == {"linear_top1": 74.6, "knn_top1": 68.7}
    assert ex.PAPER["table14"]["cifar100"]["osessl"]["coarse_knn_top1"] == 82.2
    row = ex.with_paper({"linear_top1": 90.0}, "table1", "cifar10", "osessl")
    assert row["paper_linear_top1"] == 95.19 and row["diff_linear_top1"] == pytest.approx(-5.19)
    assert row["paper_knn_top1"] == 94.20 and "diff_knn_top1" not in row  # nothing measured: no difference
    assert ex.with_paper({"a": 1}, "table1", "cifar10", "unknown-method") == {"a": 1}
    # Every sweep row label the notebooks build from the paper's values has a paper entry.
    assert {f"alpha={a:g}" for a in (1.0, 0.75, 0.5, 0.25)} == set(ex.PAPER["table8"]["cifar10"])
    assert {f"lam={v:g}" for v in (0.1, 0.5, 1)} | {f"mu={v:g}" for v in (0.1, 0.5, 1)} == set(
        ex.PAPER["table15"]["cifar10"])


# What the notebooks and report.py read before the numbers moved out of code into paper_numbers.json.
PAPER_DIGEST = "f190570f249cbbebf625a66db94bf8297803570768c5019922d7578ec77405ef"  # sha256 of the sorted JSON
PAPER_COUNTS = {"table1": 78, "table6": 12, "table7": 16, "table8": 16, "table9": 20, "table14": 28, "table15": 24,
                "table16": 32, "table17": 8, "table4": 8, "table5": 30, "table2": 41, "table3": 14}
ADDED = ("table2", "table3")  # entered after the move to the data file (the digest pins the others)


def test_paper_numbers_file_places_every_number():
    import hashlib
    entries = ex.paper_numbers()
    for e in entries:  # every number says where in the paper it comes from
        assert set(e) == {"table", "dataset", "row", "column", "value"}, e
        assert all(isinstance(e[k], str) and e[k] for k in ("table", "dataset", "row", "column")), e
        assert isinstance(e["value"], (int, float)) and not isinstance(e["value"], bool), e
    places = [(e["table"], e["dataset"], e["row"], e["column"]) for e in entries]
    assert len(set(places)) == len(places)  # no number given twice
    raw = json.loads(ex.paper.PAPER_NUMBERS.read_text())
    assert set(raw["tables"]) == {e["table"] for e in entries}  # each table has its note (setup, units)
    # The same numbers, in the same order, as the dict that was in code.
    assert {t: sum(len(r) for ds in d.values() for r in ds.values()) for t, d in ex.PAPER.items()} == PAPER_COUNTS
    moved = {t: d for t, d in ex.PAPER.items() if t not in ADDED}
    assert hashlib.sha256(json.dumps(moved, sort_keys=True).encode()).hexdigest() == PAPER_DIGEST
    assert ex.paper_row("table2", "imagenet1k", "osessl@1024") == {"linear_top1_ep100": 72.8, "linear_top1_ep200": 74.6,
                                                                  "linear_top1_ep800": 76.4}
    assert ex.paper_row("table3", "imagenet1k", "osessl") == {"linear_top1": 74.7, "knn_top1": 70.9}
    assert list(ex.PAPER) == list(PAPER_COUNTS)
    assert ex.paper_methods("table14") == ["simclr", "swav", "mocov3", "dino", "vicreg", "resa", "osessl"]
    assert ex.paper_methods("table17") == ["mocov3", "dino", "resa", "osessl"]


def test_paper_row_returns_what_the_notebooks_used():
    assert ex.paper_row("table1", "cifar10", "resa") == {"linear_top1": 93.53, "knn_top1": 93.02}
    assert ex.paper_row("table1", "cifar100", "osessl") == {"linear_top1": 75.47, "knn_top1": 69.89}
    assert ex.paper_row("table1", "imagenet100", "intl") == {"linear_top1": 81.68, "knn_top1": 73.46}
    assert ex.paper_row("table17", "imagenet1k", "resa") == {"memory_gb": 14.8, "hours_per_epoch": 0.36}
    assert ex.paper_row("table4", "imagenet1k", "osessl") == {"top1_1pct": 61.3, "top1_10pct": 72.5,
                                                              "top5_1pct": 84.8, "top5_10pct": 91.0}
    assert ex.paper_row("table5", "flowers102", "resa") == {"knn5_top1": 84.4, "knn10_top1": 83.6,
                                                            "knn20_top1": 83.6}
    assert ex.paper_row("table14", "cifar100", "resa") == {"fine_linear_top1": 72.2, "fine_knn_top1": 66.8,
                                                           "coarse_linear_top1": 79.8, "coarse_knn_top1": 78.8}
    assert ex.paper_row("table16", "cifar100", "tau_t=0.4") == {"linear_top1": 74.5, "knn_top1": 68.4}
    assert ex.paper_row("table9", "cifar10", "seed=3") == {"linear_top1": 95.1, "knn_top1": 93.7}
    assert ex.paper_row("table1", "cifar10", "nosuch") is None and ex.paper_row("table99", "x", "y") is None
    ex.paper_row("table1", "cifar10", "resa")["linear_top1"] = 0.0  # a copy: the caller cannot change the paper
    assert ex.PAPER["table1"]["cifar10"]["resa"]["linear_top1"] == 93.53


def test_paper_numbers_rejects_an_unplaced_number(tmp_path):
    bad = tmp_path / "paper.json"
    bad.write_text(json.dumps({"numbers": [{"table": "table1", "dataset": "cifar10", "row": "resa", "value": 1.0}]}))
    with pytest.raises(ValueError, match="column"):
        ex.paper_numbers(bad)


def test_load_bench_reads_rows_and_skips_bad_files(tmp_path):
    assert ex.load_bench(tmp_path / "missing") == []
    (tmp_path / "a.json").write_text(json.dumps({"rows": [{"method": "resa", "images_per_s": 1.0}]}))
    (tmp_path / "b.json").write_text(json.dumps({"method": "osessl", "images_per_s": 2.0}))
    (tmp_path / "c.json").write_text("{not json")
    rows = ex.load_bench(tmp_path)
    assert [(r["file"], r["method"]) for r in rows] == [("a.json", "resa"), ("b.json", "osessl")]


# ---------------------------------------------------------------------------------------------- small helpers

def test_labelled_fraction_is_class_balanced_and_seeded():
    labels = torch.arange(10).repeat_interleave(30)
    idx = labelled_fraction(labels, 0.1, seed=1)
    assert torch.bincount(labels[idx]).tolist() == [3] * 10
    assert torch.equal(idx, labelled_fraction(labels, 0.1, seed=1))
    assert not torch.equal(idx, labelled_fraction(labels, 0.1, seed=2))
    assert torch.bincount(labels[labelled_fraction(labels, 0.001)]).tolist() == [1] * 10  # at least one
    with pytest.raises(ValueError):
        labelled_fraction(labels, 0.0)


def test_random_pool_excludes_and_is_seeded():
    pool = ex.random_pool(100, 50, exclude=[0, 5, 7], seed=0)
    assert len(pool) == 50 and len(set(pool.tolist())) == 50
    assert not {0, 5, 7} & set(pool.tolist())
    assert torch.equal(pool, ex.random_pool(100, 50, exclude=[0, 5, 7], seed=0))


class _Head:
    """A method stand-in: only the public eval_encoder() / eval_projector() are used."""

    def __init__(self, projector):
        self.encoder, self.projector = torch.nn.Flatten(), projector

    def eval_encoder(self):
        return self.encoder

    def eval_projector(self):
        return self.projector


def test_projector_hidden_finds_layers_by_type_not_position():
    from torch import nn
    from osessl_core.models.heads import build_projector
    resa = build_projector(8, 16, 4)  # Linear-BN-ReLU x2, Linear-BN
    first = ex.projector_hidden(_Head(resa))
    assert [type(m) for m in first] == [nn.Linear, nn.BatchNorm1d, nn.ReLU] and first[0] is resa[0]
    assert len(ex.projector_hidden(_Head(resa), 2)) == 6 and len(ex.projector_hidden(_Head(resa), 0)) == 0
    # Another layout: no norm, GELU, the blocks nested in their own Sequentials (DINO without BN, say).
    nested = nn.Sequential(nn.Sequential(nn.Linear(8, 16), nn.GELU()), nn.Sequential(nn.Linear(16, 16), nn.GELU()),
                           nn.Linear(16, 4))
    assert [type(m) for m in ex.projector_hidden(_Head(nested))] == [nn.Linear, nn.GELU]
    net = ex.eval_network(_Head(nested), ex.projector_hidden(_Head(nested), 2))
    assert net(torch.zeros(3, 2, 4)).shape == (3, 16)
    with pytest.raises(ValueError, match="has 2 hidden layer"):
        ex.projector_hidden(_Head(nested), 3)
    with pytest.raises(ValueError, match="has 0 hidden layer"):
        ex.projector_hidden(_Head(nn.Sequential(nn.Linear(8, 4))))
    with pytest.raises(TypeError, match="not an nn.Sequential"):
        ex.projector_hidden(_Head(nn.Linear(8, 4)))


# Engine internals and method attributes that notebooks must not reach (experiments has public helpers for them).
NOTEBOOK_IMPORTS = re.compile(r"^\s*(?:from\s+(\S+)\s+import\s+(.+)|import\s+(\S+))", re.M)
ALLOWED_OSESSL = {"osessl_core.eval", "osessl_core.report"}


def test_notebooks_use_only_the_public_experiments_eval_and_report_api():
    import nbformat
    for path in sorted((REPO_ROOT / "notebooks").glob("*.ipynb")):
        code = "\n".join(c.source for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code")
        for frm, names, imp in NOTEBOOK_IMPORTS.findall(code):
            module = frm or imp
            if not module.startswith("osessl_core"):
                continue
            if module == "osessl_core":
                assert {n.strip() for n in names.split(",")} <= {"experiments as ex", "report"}, (path.name, names)
            else:
                assert module in ALLOWED_OSESSL, f"{path.name} imports {module}"
        unknown = sorted(set(re.findall(r"\bex\.(\w+)", code)) - set(ex.__all__))
        assert not unknown, f"{path.name} uses ex.{unknown}, not in experiments.__all__"
        reach = [f"{o}.{a}" for o, a in re.findall(
            r"(\w+)\.(momentum_projector|momentum_encoder|exemplar_images|exemplar_indices|memory)\b", code) if o != "ex"]
        assert not reach, f"{path.name} reaches into a method: {reach}"


def _dataset(labels, classes, coarse=None, coarse_classes=None):
    n = len(labels)
    return ImageDataset(images=torch.zeros(n, 3, 4, 4, dtype=torch.uint8), labels=torch.tensor(labels),
                        classes=classes, name="x", split="train", source="mem", mean=(0.5,) * 3, std=(0.2,) * 3,
                        coarse_labels=None if coarse is None else torch.tensor(coarse), coarse_classes=coarse_classes)


def test_coarse_view_groups_and_native_coarse_labels():
    from osessl_core.data.datasets import CIFAR10_CLASSES
    ds = _dataset(list(range(10)), CIFAR10_CLASSES)
    coarse = ex.coarse_view(ds, ex.CIFAR10_STAND_IN_GROUPS)
    assert coarse.classes == ["animal", "vehicle"]
    assert coarse.labels.tolist() == [1, 1, 0, 0, 0, 0, 0, 0, 1, 1]
    assert torch.equal(coarse.images, ds.images)
    with pytest.raises(ValueError, match="no group"):
        ex.coarse_view(ds, {"vehicle": ["airplane"]})
    native = _dataset([0, 1, 2], ["a", "b", "c"], coarse=[1, 0, 1], coarse_classes=["p", "q"])
    assert ex.coarse_view(native).labels.tolist() == [1, 0, 1] and ex.coarse_view(native).classes == ["p", "q"]
    with pytest.raises(ValueError, match="no coarse labels"):
        ex.coarse_view(ds)


def test_quickstart_budget_is_passed_not_swapped(tmp_path, monkeypatch):
    """The quickstart notebook hands its smoke budget to run_quickstart; the module's CPU budget is never changed."""
    from osessl_core import quickstart
    before = dict(quickstart.CPU_BUDGET)
    dev, budget = quickstart.budget_for("cpu", ex.SMOKE_QUICKSTART)
    assert budget == ex.SMOKE_QUICKSTART and budget is not ex.SMOKE_QUICKSTART  # a copy: run_quickstart pops keys
    assert quickstart.budget_for("cpu")[1] == before
    calls = []
    monkeypatch.setattr(quickstart, "run_quickstart", lambda **kw: calls.append(kw) or {"methods": {}})
    for smoke in (True, False):
        ex.quickstart(ex.start("qs", smoke, str(tmp_path / str(smoke)), device="cpu"), epochs=2)
    assert [c["budget"] for c in calls] == [ex.SMOKE_QUICKSTART, None] and calls[0]["epochs"] == 2
    assert calls[0]["out_dir"] == tmp_path / "True" and calls[0]["device"] == "cpu"
    assert quickstart.CPU_BUDGET == before and not hasattr(ex, "quickstart_budget")


def test_experiment_run_trains_a_config_once(tmp_path, monkeypatch):
    calls = []

    def fake_train(cfg):
        calls.append(cfg.run_dir)
        return TrainResult(run_dir=cfg.run_dir, method=None, step=4, metrics=[{"loss": 1.0}],
                           eval={"knn_top1": 50.0})

    monkeypatch.setattr("osessl_core.engine.train", fake_train)
    monkeypatch.setattr("osessl_core.experiments.datasets.steps_per_epoch", lambda cfg: 4)
    monkeypatch.setattr("osessl_core.experiments.datasets.dataset_available", lambda name, root: (True, "src"))
    exp = ex.start("t", True, str(tmp_path / "out"))
    cfg = exp.config("osessl")
    _, ev = exp.run(cfg, "a")
    assert ev["knn_top1"] == 50.0 and ev["final_loss"] == 1.0 and ev["run_dir"].startswith(str(tmp_path / "out/runs/a-"))
    _, again = exp.run(cfg, "b")  # same config under another label: not trained again
    assert again is ev and len(calls) == 1
    exp.run(replace(cfg, width=16), "a")
    assert len(calls) == 2 and calls[0] != calls[1]

    def stopped_early(cfg):
        return TrainResult(run_dir=cfg.run_dir, method=None, step=2, metrics=[])

    monkeypatch.setattr("osessl_core.engine.train", stopped_early)
    with pytest.raises(RuntimeError, match="run the notebook again"):
        exp.run(replace(cfg, width=32), "c")


def test_sweep_rows_record_the_config_of_their_own_dataset(tmp_path, monkeypatch):
    """A CIFAR-100 row of the Table 1 sweep records the cifar100 config it trained with (the notebook's file-level
    config, built without a dataset, says cifar10)."""
    trained = []

    def fake_run(cfg, label, require_complete=True):
        trained.append(cfg)
        return (TrainResult(run_dir=cfg.run_dir, method=None, step=4, metrics=[]),
                {"knn_top1": 1.0, "linear_top1": 2.0, "final_loss": 1.0, "wall_seconds": 0.0,
                 "run_dir": f"runs/{label}"})

    monkeypatch.setattr("osessl_core.experiments.datasets.dataset_available", lambda name, root: (True, "src"))
    exp = ex.start("t", True, str(tmp_path / "out"), trains=False)
    monkeypatch.setattr(exp, "run", fake_run)
    rows, skipped = ex.sweep(exp, [{"label": "resa", "method": "resa"}, {"label": "osessl", "method": "osessl"}],
                             ["cifar10", "cifar100"], "table1", epochs=None, eval_linear=True)
    assert not skipped and [(r["dataset"], r["method"]) for r in rows] == [
        ("cifar10", "resa"), ("cifar10", "osessl"), ("cifar100", "resa"), ("cifar100", "osessl")]
    assert [c.dataset for c in trained] == ["cifar10", "cifar10", "cifar100", "cifar100"]
    for row, cfg in zip(rows, trained):
        assert row["config"]["dataset"] == row["dataset"]
        assert row["config"] == {**cfg.to_dict(), "run_dir": f"runs/{row['dataset']}-{row['method']}"}
    assert rows[2]["paper_linear_top1"] == 72.21  # ReSA's CIFAR-100 number, not its CIFAR-10 one
    # The result file's config names each row by its own dataset, and the paper-only rows say cifar100 too.
    configs = ex.sweep_configs(rows)
    assert list(configs) == ["cifar10/resa", "cifar10/osessl", "cifar100/resa", "cifar100/osessl"]
    assert all(configs[k]["dataset"] == k.split("/")[0] for k in configs)
    paper_only = [r for r in ex.not_implemented_rows("table1", rows) if r["dataset"] == "cifar100"]
    assert paper_only and all(r["paper_linear_top1"] == ex.paper_row("table1", "cifar100", r["method"])["linear_top1"]
                              for r in paper_only)


# ---------------------------------------------------------------------------------------------- with real data

@pytest.fixture(scope="module")
def trained(tmp_path_factory, cifar_root):
    """A smoke-budget OSESSL run on real CIFAR-10 (1 epoch of 4 steps)."""
    exp = ex.start("unit", True, str(tmp_path_factory.mktemp("exp")), data_root=cifar_root)
    cfg = exp.config("osessl", eval_linear=True)
    result, ev = exp.run(cfg, "cifar10-osessl")
    return exp, cfg, result, ev, ex.train_data(cfg)


@pytest.mark.slow
def test_sweep_rows_and_skipped_datasets(trained):
    exp, *_ = trained
    rows, skipped = ex.sweep(exp, [{"label": "k=8", "method_args": {"k": 8}}], ["cifar10", "cifar100"], "table7",
                             extra_cols=("k", "alpha", "seed"), eval_linear=True)
    assert [s["dataset"] for s in skipped] == (["cifar100"] if not ex.dataset_available("cifar100", exp.data_root)[0]
                                               else [])
    row = rows[0]
    assert row["dataset"] == "cifar10" and row["row"] == "k=8" and (row["k"], row["alpha"], row["seed"]) == (8, 0.75, 0)
    assert 0 <= row["linear_top1"] <= 100 and 0 <= row["knn_top1"] <= 100
    assert row["paper_linear_top1"] == 95.2 and row["diff_knn_top1"] == pytest.approx(row["knn_top1"] - 94.2)
    assert row["steps"] == 4


@pytest.mark.slow
def test_representations_and_exemplar_neighbours(trained):
    exp, cfg, result, ev, train_set = trained
    method = result.method
    mean, std = train_set.mean, train_set.std
    reps = ex.representations(method, train_set.images[:20], mean, std, "cpu")
    assert reps["encoder"].shape == (20, method.encoder.out_dim)
    assert reps["projector_hidden"].shape == (20, cfg.proj_hidden) and (reps["projector_hidden"] >= 0).all()  # ReLU
    assert reps["projector"].shape == (20, cfg.proj_out)
    first_hidden = ex.projector_hidden(method)
    assert all(a is b for a, b in zip(first_hidden, method.eval_projector()[:3])) and len(first_hidden) == 3
    pool = ex.random_pool(len(train_set), 60, exclude=method.exemplar_indices.cpu())
    nb = ex.exemplar_neighbours(method, train_set.images[pool], mean, std, "cpu", k=4)
    assert nb["pool_neighbours"].shape == (10, 4) and int(nb["pool_neighbours"].max()) < 60
    assert torch.allclose(nb["pool_weights"].sum(1), torch.ones(10))
    assert nb["bank_filled"] == 64 and nb["bank_neighbours"].shape == (10, 4)
    own = ex.images(train_set, ex.exemplar_indices(result.run_dir))  # Figure 4's exemplars, as for a streamed run
    again = ex.exemplar_neighbours(method, train_set.images[pool], mean, std, "cpu", k=4, exemplar_images=own)
    assert torch.equal(again["pool_neighbours"], nb["pool_neighbours"])
    fig = ex.plot_exemplar_grid(method.exemplar_images.cpu(), train_set.images[pool[nb["pool_neighbours"]]],
                                train_set.classes, train_set.labels[pool[nb["pool_neighbours"]]])
    assert len(fig.axes) == 10 * 5


@pytest.mark.slow
def test_exemplar_indices_read_the_runs_exemplars_json(trained):
    """Figure 4 takes the exemplars from the run directory's exemplars.json (the trainer's format, read with
    load_exemplars): the same images the method trained with."""
    exp, cfg, result, ev, train_set = trained
    written = json.loads((result.run_dir / "exemplars.json").read_text())
    assert written["exemplar_indices"] == result.method.exemplar_indices.tolist()
    idx = ex.exemplar_indices(result.run_dir)
    assert idx.dtype == torch.int64 and idx.tolist() == written["exemplar_indices"]
    assert ex.exemplar_indices(ev["run_dir"]).tolist() == idx.tolist()  # the eval dict's run_dir works too
    assert train_set.labels[idx].tolist() == list(range(train_set.num_classes))  # one per class, class order
    assert torch.equal(train_set.images[idx], result.method.exemplar_images.cpu())


@pytest.mark.slow
def test_evaluate_views_fine_and_coarse(trained):
    exp, cfg, result, ev, train_set = trained
    test_set = load_dataset("cifar10", exp.data_root, "test")
    groups = ex.CIFAR10_STAND_IN_GROUPS
    out = ex.evaluate_views(result.method, cfg, {"fine": (train_set, test_set),
                                                 "coarse": (ex.coarse_view(train_set, groups),
                                                            ex.coarse_view(test_set, groups))}, "cpu")
    assert out["fine_classes"] == 10 and out["coarse_classes"] == 2
    assert out["fine_knn_top1"] == pytest.approx(ev["knn_top1"])  # the same evaluation as the trainer's
    for k in ("fine_knn_top1", "fine_linear_top1", "coarse_knn_top1", "coarse_linear_top1"):
        assert 0 <= out[k] <= 100


@pytest.mark.slow
def test_finetune_and_timing(trained):
    exp, cfg, result, ev, train_set = trained
    test_set = train_set.subset(slice(0, 50))
    before = {k: v.clone() for k, v in result.method.momentum_encoder.state_dict().items()}
    res = ex.finetune(result.method, train_set, test_set, 0.1, epochs=1, batch_size=16, device="cpu")
    assert res["n_labelled"] == len(labelled_fraction(train_set.labels, 0.1))
    assert 0 <= res["top1"] <= res["top5"] <= 100 and math.isfinite(res["final_train_loss"])
    after = result.method.momentum_encoder.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # fine-tuning works on a copy
    timing = ex.time_training(exp, cfg, "osessl", warmup_steps=1, measure_steps=2)
    assert timing["measured_steps"] == 2 and timing["images_per_s"] > 0
    assert timing["gpu_peak_memory_gb"] == "n/a" and timing["process_max_rss_gb"] > 0
    assert timing["streamed"] is False and timing["image_size"] == 32 and timing["dataset"] == "cifar10"
    assert timing["seconds_per_epoch"] == pytest.approx(timing["steps_per_epoch"] * cfg.batch_size / timing["images_per_s"])


@pytest.mark.slow
def test_make_image_folder_from_cifar(tmp_path, cifar_root):
    dest = ex.make_image_folder_from_cifar(tmp_path / "f", f"{cifar_root}/{ex.CIFAR_ARCHIVE_NAME}", 3, 2,
                                           classes=["cat", "dog"])
    assert sorted(p.name for p in (dest / "train").iterdir()) == ["cat", "dog"]
    assert all(len(list((dest / s / c).glob("*.jpg"))) == n for s, n in (("train", 3), ("test", 2))
               for c in ("cat", "dog"))
    ds = load_dataset("imagefolder", dest, "train", cache_dir=tmp_path / "cache")
    assert ds.images.shape == (6, 3, 32, 32) and ds.classes == ["cat", "dog"]
    marker = (dest / ".complete.json").stat().st_mtime_ns
    assert ex.make_image_folder_from_cifar(dest, f"{cifar_root}/{ex.CIFAR_ARCHIVE_NAME}", 3, 2,
                                           classes=["cat", "dog"]) == dest
    assert (dest / ".complete.json").stat().st_mtime_ns == marker  # complete: reused, not rebuilt
    with pytest.raises(ValueError, match="unknown CIFAR-10 classes"):
        ex.make_image_folder_from_cifar(tmp_path / "g", classes=["unicorn"])


# ---------------------------------------------------------------------------------------------- streamed folders

class _TinyMethod(torch.nn.Module):
    """What the probes use of a method: eval_encoder() and an eval_projector() with one hidden layer."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.enc = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, stride=4), torch.nn.AdaptiveAvgPool2d(1),
                                       torch.nn.Flatten())
        self.proj = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.ReLU(),
                                        torch.nn.Linear(8, 4))

    def eval_encoder(self):
        return self.enc

    def eval_projector(self):
        return self.proj


@pytest.fixture(scope="module")
def big_folder(tmp_path_factory):
    """3 classes x 4 images of 100 px: streamed (> 64 px)."""
    from osessl_core.data.synthetic import make_image_folder
    return make_image_folder(tmp_path_factory.mktemp("big"), classes=3, per_class=4, sizes=((100, 80), (80, 100)))


def test_split_of_images_and_resolution_for_both_kinds(big_folder):
    from osessl_core.data.imagefolder import IMAGENET_STATS, eval_view
    cfg = TrainConfig(dataset="imagefolder", data_root=str(big_folder), image_size=40)
    train = ex.split_of(cfg, "train")
    assert ex.is_streamed(train) and len(train) == 12 and train.image_size == 40
    assert len(ex.split_of(cfg, "test")) == 12  # val/ stands in for test/
    assert ex.normalization(train) == (tuple(IMAGENET_STATS[0]), tuple(IMAGENET_STATS[1]))
    assert ex.training_resolution(cfg) == 40 and ex.training_resolution(replace(cfg, image_size=None)) == 224
    grid = ex.images(train, torch.tensor([[0, 5], [11, 5]]))
    assert grid.shape == (2, 2, 3, 40, 40) and grid.dtype == torch.uint8
    assert torch.equal(grid[1, 0], eval_view(train.read(11), 40)) and torch.equal(grid[0, 1], grid[1, 1])
    assert ex.images(train, [3], 24).shape == (1, 3, 24, 24) and ex.images(train, []).shape == (0, 3, 40, 40)
    held = _dataset([0, 1, 2], ["a", "b", "c"])
    assert not ex.is_streamed(held) and torch.equal(ex.images(held, [2, 0]), held.images[[2, 0]])
    assert ex.images(held, [[0], [1]], 8).shape == (2, 1, 3, 8, 8)


def test_knn_transfer_holds_small_folders_and_streams_large_ones(tmp_path, big_folder):
    from osessl_core.data.synthetic import make_image_folder
    small = make_image_folder(tmp_path / "small", classes=3, per_class=4, splits=("train", "test"), sizes=((32, 32),))
    method = _TinyMethod()
    held = ex.knn_transfer(method, small, (1, 5), "cpu")
    assert not held["streamed"] and held["image_size"] == 32 and held["n_train"] == held["n_test"] == 12
    streamed = ex.knn_transfer(method, big_folder, (5, 10, 20), "cpu", train_size=48, workers=0)
    assert streamed["streamed"] and streamed["image_size"] == 48 and streamed["classes"] == 3
    assert streamed["knn_k_cap"] == 12 and {"knn5_top1", "knn10_top1", "knn20_top1"} <= set(streamed)
    assert ex.knn_transfer(method, big_folder, (5,), "cpu", image_size=32, workers=0)["image_size"] == 32
    for res in (held, streamed):
        assert all(0 <= v <= 100 for k, v in res.items() if k.startswith("knn") and k.endswith("top1"))


def test_finetune_streamed_runs_the_semisup_protocol_and_subset_files(tmp_path, big_folder):
    cfg = TrainConfig(dataset="imagefolder", data_root=str(big_folder), image_size=32)
    train, val = ex.split_of(cfg, "train"), ex.split_of(cfg, "val")
    method = _TinyMethod()
    before = {k: v.clone() for k, v in method.state_dict().items()}
    res = ex.finetune(method, train, val, 0.25, epochs=1, batch_size=4, workers=0)
    assert res["protocol"] == "imagenet" and res["n_labelled"] == 3 and res["size"] == 32  # one per class
    assert 0 <= res["top1"] <= res["top5"] <= 100 and res["n_val"] == 12
    assert all(torch.equal(before[k], v) for k, v in method.state_dict().items())  # a copy is fine-tuned
    subset = tmp_path / "1percent.txt"
    subset.write_text("\n".join(f.rsplit("/", 1)[-1] for f in train.files[:2]) + "\n")
    listed = ex.finetune(method, train, val, 0.01, epochs=1, batch_size=4, subset_file=subset, workers=0)
    assert listed["n_labelled"] == 2 and listed["subset_file"] == str(subset)
    with pytest.raises(ValueError, match="streamed folder"):
        ex.finetune(method, _dataset([0, 1], ["a", "b"]), None, 0.5, subset_file=subset)
