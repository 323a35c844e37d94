"""The README's main job, end to end with a tiny CPU budget (the real CPU budget is timed by hand, see README)."""
import json

import pytest

from osessl_core import quickstart

pytestmark = pytest.mark.slow


def test_quickstart_writes_summary_and_figure(tmp_path, cifar_root, monkeypatch):
    monkeypatch.setitem(quickstart.__dict__, "CPU_BUDGET", dict(
        epochs=1, batch_size=64, width=8, subset=256, eval_test_subset=200, embed_points=150, proj_hidden=64,
        proj_out=32, warmup_epochs=0.0))
    summary = quickstart.run_quickstart(out_dir=tmp_path, data_root=cifar_root, device="cpu", progress=False)
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert saved["budget"]["subset"] == 256 and saved["device"] == "cpu"
    for name in ("resa", "osessl"):
        assert 0 <= saved["methods"][name]["knn_top1"] <= 100
        assert (tmp_path / "runs" / name / "eval.json").exists()
    assert saved["provenance"]["git_sha"] and summary["wall_seconds"] > 0
    assert (tmp_path / "embeddings.png").stat().st_size > 10_000 and (tmp_path / "embeddings.pdf").exists()
