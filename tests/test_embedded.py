"""The embedded default: shipped checkpoint integrity, a short pretraining that learns, and the demo pipeline."""
import hashlib
import json

import torch

from suite.models import asset_path, create_model_and_transforms


def test_shipped_checkpoint_matches_recorded_sha256_and_loads():
    weights = asset_path("tiny-clip")
    meta = json.loads(weights.with_suffix(".json").read_text())
    assert hashlib.sha256(weights.read_bytes()).hexdigest() == meta["sha256"]
    assert weights.stat().st_size <= 20 * 2**20
    bb = create_model_and_transforms("embedded:tiny-clip")
    assert bb.pretrained
    random = create_model_and_transforms("embedded:tiny-clip@random")
    a = dict(bb.named_parameters())["model.logit_scale"]
    b = dict(random.named_parameters())["model.logit_scale"]
    assert not torch.equal(a, b)


def test_short_pretraining_loss_falls():
    from suite.experiments.pretrain import pretrain

    res = pretrain("tiny-world", out_dir=None, steps=40, progress=False)
    losses = res["losses"]
    assert len(losses) == 40
    first, last = sum(losses[:8]) / 8, sum(losses[-8:]) / 8
    assert last < first - 0.05, (first, last)


def test_pretraining_is_deterministic_for_a_seed():
    from suite.experiments.pretrain import pretrain

    a = pretrain("tiny-world", steps=3, progress=False)["losses"]
    b = pretrain("tiny-world", steps=3, progress=False)["losses"]
    assert a == b


def test_demo_quick_writes_records_site_and_table_in_its_own_folder(tmp_path, monkeypatch):
    from pathlib import Path

    from suite.experiments.demo import demo

    repo = Path(__file__).resolve().parents[1]
    before = sorted(p.name for p in (repo / "results").iterdir())
    table = demo(out=str(tmp_path / "demo"), quick=True)
    assert "zeroshot" in table and "pegp" in table and "leaderboard site" in table and "refLast" in table
    assert len(list((tmp_path / "demo").glob("*.json"))) == 3
    assert (tmp_path / "demo" / "site" / "class-incremental.html").is_file()
    assert sorted(p.name for p in (repo / "results").iterdir()) == before  # the reference records are untouched
    import pytest

    with pytest.raises(ValueError, match="does not write into the committed reference records"):
        demo(out=str(repo / "results"), quick=True)
