"""The performance changes compute what they replace: the short-sequence attention path, LoRA's fused and merged
forms, the vectorised ECE bootstrap and POPE thresholds, image features kept when nothing reaches them, and the
pretrained evaluation shared within a process. Speed itself is measured by ``clsuite bench``, not here."""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import run_config

from suite.evaluation.calibration import _ece_rows, ece_with_interval
from suite.evaluation.hallucination import _questions, average_ranks, calibrate_thresholds, concept_auroc_interval, pope
from suite.models.attention import SMALL_ATTENTION, attend


@pytest.mark.parametrize("mask", ["none", "bool", "float"])
def test_short_attention_computes_what_the_fused_kernel_computes(mask):
    torch.manual_seed(0)
    q, k, v = (torch.randn(3, 4, 17, 32, dtype=torch.float64, requires_grad=True) for _ in range(3))
    m = None
    if mask == "bool":
        m = torch.rand(17, 17) > 0.3
        m.fill_diagonal_(True)
    elif mask == "float":
        m = torch.full((17, 17), float("-inf"), dtype=torch.float64).triu(1)
    assert q.shape[-2] * k.shape[-2] <= SMALL_ATTENTION  # the plain path is the one tested
    ours = attend(q, k, v, m)
    theirs = F.scaled_dot_product_attention(q, k, v, attn_mask=m)
    torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-10)
    g = torch.randn_like(ours)
    assert all(torch.allclose(a, b, rtol=1e-9, atol=1e-10) for a, b in zip(
        torch.autograd.grad(ours, (q, k, v), g), torch.autograd.grad(theirs, (q, k, v), g)))


def test_lora_fused_and_merged_forms_are_the_textbook_map():
    """Training (addmm with the scaled low-rank term) and evaluation (merged weight) both compute
    ``W x + b + (α/r) B A x``, and the features PEGP collects are the layer inputs and ``A x``."""
    from suite.pet.lora import LoRALinear

    torch.manual_seed(0)
    base = torch.nn.Linear(24, 16).double()
    layer = LoRALinear("lora.test", base, rank=3, alpha=6.0).double()
    with torch.no_grad():
        layer.B.normal_()
    x = torch.randn(5, 7, 24, dtype=torch.float64)
    expected = base(x) + 2.0 * (x @ layer.A.T @ layer.B.T)
    torch.testing.assert_close(layer(x), expected)  # grad enabled: the training form
    with torch.no_grad():
        torch.testing.assert_close(layer(x), expected)  # the merged form
    seen = {}
    layer._sink = lambda key, feats: seen.__setitem__(key.rsplit(".", 1)[1], feats)
    with torch.no_grad():  # a collector listening: the features are emitted, not merged away
        torch.testing.assert_close(layer(x), expected)
    torch.testing.assert_close(seen["A"], x)
    torch.testing.assert_close(seen["B"], x @ layer.A.T)


def test_vectorised_ece_and_thresholds_equal_their_definitions():
    rng = np.random.default_rng(0)
    for n in (1, 7, 15, 16, 200):
        conf, ok = rng.random((4, n)), (rng.random((4, n)) < 0.6).astype(np.float64)
        for r in range(4):
            order = np.argsort(conf[r], kind="stable")
            loop = sum(len(p) / n * abs(ok[r][p].mean() - conf[r][p].mean())
                       for p in np.array_split(order, min(15, n)) if len(p))
            assert _ece_rows(conf, ok, 15)[r] == pytest.approx(loop, abs=1e-12)
    assert ece_with_interval(np.zeros(0), np.zeros(0, bool))["value"] == 0.0
    for trial in range(50):
        n, c = int(rng.integers(1, 40)), int(rng.integers(1, 5))
        scores = np.round(rng.normal(size=(n, c)), int(rng.integers(0, 3)))  # ties included
        present = rng.random((n, c)) < 0.3
        th = calibrate_thresholds(scores, present)
        for j in range(c):  # the definition: the first candidate threshold with the best F1
            s, y = scores[:, j], present[:, j]
            cands = np.unique(s)
            tries = np.concatenate([[cands[0] - 1e-9], (cands[:-1] + cands[1:]) / 2])
            f1 = [2 * ((s > t) & y).sum() / max(1, (s > t).sum() + y.sum()) for t in tries]
            assert th[j] == tries[int(np.argmax(f1))]



def _pairwise_auroc_interval(scores, present, seed, resamples=1000, tie=0.5):
    """The bootstrap interval's definition: every (present, absent) pair weighted by both images' draw counts."""
    n = len(scores)
    w = np.random.default_rng([seed, 7]).multinomial(n, np.full(n, 1.0 / n), size=resamples).astype(np.float64)
    aucs = []
    for c in range(scores.shape[1]):
        y, s = present[:, c], scores[:, c]
        if y.any() and not y.all():
            sp, sn = s[y], s[~y]
            wins = (sp[:, None] > sn[None, :]) + tie * (sp[:, None] == sn[None, :])
            num = np.einsum("bi,ij,bj->b", w[:, y], wins, w[:, ~y])
            den = w[:, y].sum(1) * w[:, ~y].sum(1)
            aucs.append(np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan))
    macro = np.nanmean(np.stack(aucs), 0)
    lo, hi = np.percentile(macro[~np.isnan(macro)], [2.5, 97.5])
    return [float(lo), float(hi)]


def test_probe_interval_and_questions_equal_their_definitions():
    """The AUROC interval counts pairs through one product per concept and reuses the draw counts; POPE's
    questions are drawn once per probe and answered by indexing: both give their definitions' numbers exactly,
    ties (counted one half) and repeated calls with other scores included."""
    rng = np.random.default_rng(1)
    concepts = ["red circle", "blue circle", "red square", "green star", "blue star"]
    for trial in range(6):
        n = int(rng.integers(8, 60))
        present = rng.random((n, len(concepts))) < 0.35
        present[0, 0], present[1, 0] = True, False  # concept 0 has both kinds of image
        scores = np.round(rng.normal(size=(n, len(concepts))), int(rng.integers(0, 3)))  # ties included
        assert concept_auroc_interval(scores, present, seed=trial) == _pairwise_auroc_interval(scores, present, trial)
        th = rng.normal(size=len(concepts)) * 0.5
        got = pope(scores, present, th, concepts, seed=trial)
        for strategy in ("random", "popular", "adversarial"):
            qs = _questions(present, concepts, strategy, np.random.default_rng(trial))
            yes = np.array([scores[i, c] > th[c] for i, c, _ in qs])
            truth = np.array([t for _, _, t in qs])
            assert got[strategy]["yes_ratio"] == float(yes.mean())
            assert got[strategy]["accuracy"] == float((yes == truth).mean())
            assert got[strategy]["false_positive_rate"] == float(yes[~truth].mean())
    # the equality is not vacuous: on these tied scores, counting a tie as a whole win gives another interval
    scores = np.round(rng.normal(size=(80, 2)), 0)
    present = rng.random((80, 2)) < 0.4
    assert concept_auroc_interval(scores, present) == _pairwise_auroc_interval(scores, present, 0)
    assert concept_auroc_interval(scores, present) != _pairwise_auroc_interval(scores, present, 0, tie=1.0)


def test_mean_of_numbers_is_nanmean_without_its_warning():
    """The same numbers as np.nanmean over the first axis, bit for bit; NaN for a column of NaN, silently."""
    import warnings

    from suite.results.uncertainty import mean_of_numbers

    rng = np.random.default_rng(4)
    x = rng.normal(size=(7, 300))
    x[rng.random(x.shape) < 0.4] = np.nan
    x[:, :3] = np.nan  # columns with no number
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = np.nanmean(x, 0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = mean_of_numbers(x)
    assert np.array_equal(got, expected, equal_nan=True) and np.isnan(got[:3]).all()


def test_probe_interval_on_a_tiny_probe_leaves_out_the_resamples_without_a_pair_silently():
    """Four images, one present per concept: many resamples draw no (present, absent) pair of any concept. They
    are left out (as nanmean leaves them out) and nothing warns; when no resample scores a concept there is no
    interval."""
    import warnings

    scores = np.array([[0.9, 0.1], [0.2, 0.8], [0.4, 0.3], [0.1, 0.2]])
    present = np.array([[True, False], [False, True], [False, False], [False, False]])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = _pairwise_auroc_interval(scores, present, 0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert concept_auroc_interval(scores, present) == expected
        assert concept_auroc_interval(scores[:1], present[:1]) is None  # one image: no concept has both kinds
        # two images, one resample: it draws both (AUROC 1) or one of them twice (no pair, no interval)
        assert concept_auroc_interval(scores[:2, :1], present[:2, :1], resamples=1, seed=1) == [1.0, 1.0]
        assert concept_auroc_interval(scores[:2, :1], present[:2, :1], resamples=1, seed=0) is None

@pytest.mark.parametrize("pet,method,fixed", [("coop", "seq", True), (None, "zeroshot", True), ("lora", "seq", False),
                                              ("vpt", "seq", False), (None, "l2p", False), (None, "finetune", False)])
def test_image_features_are_kept_only_when_nothing_that_trains_reaches_them(pet, method, fixed, seq_file, tmp_path):
    """Kept features give the record a fresh encoding after every task gives (bit for bit on one machine)."""
    from suite.engine import runner as runner_module
    from suite.results.records import strip_timings

    cfg = run_config(seq_file(), tmp_path, pet=pet, method=method, model="embedded:tiny-clip",
                     training={"iterations": 2})
    runner = runner_module.Runner(cfg)
    assert runner.images_fixed() is fixed
    if not fixed:
        return
    kept = strip_timings(runner.run())
    fresh_runner = runner_module.Runner(dataclasses.replace(cfg, out=str(tmp_path / "fresh")))
    fresh_runner.evaluator.images_fixed = False
    assert strip_timings(fresh_runner.run()) == kept


def test_attention_plain_path_scale_is_the_head_dimension():
    """The scale is 1/sqrt(d_h) of the keys' last dimension (a uniform-key check a wrong scale would fail)."""
    q = torch.ones(1, 1, 2, 4)
    k = torch.tensor([[[[1.0, 0, 0, 0], [0, 0, 0, 0]]]])
    v = torch.tensor([[[[1.0], [0.0]]]])
    w = 1 / (1 + math.exp(-1 / math.sqrt(4)))
    torch.testing.assert_close(attend(q, k, v), torch.full((1, 1, 2, 1), w))


def test_rendered_data_is_read_back_verified_and_a_damaged_copy_is_rendered_anew(tmp_path, monkeypatch):
    """The disk cache gives back the rendered task exactly; a changed byte in the stored images is caught by the
    recorded digest and the task is rendered again (and the copy replaced); ``CLSUITE_CACHE=off`` stores nothing."""
    from suite.config.sequences import load_sequence
    from suite.data import embedded, render_cache

    monkeypatch.setenv("CLSUITE_CACHE", str(tmp_path / "cache"))
    seq = load_sequence("world-class-incremental")
    spec = seq.tasks[0]
    renders = []

    def render():
        renders.append(1)
        return embedded.load_world(seq, spec, 16)

    first = render_cache.cached(seq, spec, 16, render)
    again = render_cache.cached(seq, spec, 16, render)
    assert len(renders) == 1
    for part in ("train", "test"):
        a, b = getattr(first, part), getattr(again, part)
        assert np.array_equal(a.images, b.images) and np.array_equal(a.labels, b.labels)
        assert a.ids == b.ids and a.captions == b.captions and a.objects == b.objects
    assert (first.classnames, first.templates) == (again.classnames, again.templates)
    assert first.content_sha256 == again.content_sha256 == render_cache.image_digest(again)  # hashed once, kept
    stored = tmp_path / "cache" / "rendered" / f"{render_cache.render_key(seq, spec, 16)}.npz"
    with np.load(stored) as z:
        arrays = {k: z[k].copy() for k in z.files}
    arrays["test_images"][0, 0, 0, 0] ^= 1
    np.savez(stored, **arrays)
    healed = render_cache.cached(seq, spec, 16, render)
    assert len(renders) == 2 and np.array_equal(healed.test.images, first.test.images)
    assert render_cache.cached(seq, spec, 16, render) is not None and len(renders) == 2  # the copy was replaced
    stored.write_bytes(stored.read_bytes()[:100])  # a truncated archive (say, a full disk) is rendered anew too
    render_cache.cached(seq, spec, 16, render)
    assert len(renders) == 3
    assert render_cache.render_key(seq, spec, 16) != render_cache.render_key(seq, spec, 24)
    monkeypatch.setenv("CLSUITE_CACHE", "off")
    render_cache.cached(seq, spec, 16, render)
    assert len(renders) == 4


def test_compare_records_counts_what_moved(tmp_path):
    """``scripts/compare-records`` (the README's check of a rerun plan against results/): a copy is identical; a
    record whose first matrix entry and one test answer changed is counted as moved, by how much."""
    import json
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    from suite.results import items

    root = Path(__file__).resolve().parents[1]
    names = sorted(p.name for p in (root / "results").glob("world-class-incremental__*__lora__seq__s[01]__*.json"))
    old, new = tmp_path / "old", tmp_path / "new"
    old.mkdir(), new.mkdir()
    for n in names:
        shutil.copy(root / "results" / n, old / n)
        shutil.copy(root / "results" / n, new / n)
    rec = json.loads((new / names[0]).read_text())
    right = items.unpack(rec["steps"][0]["items"]["tasks"][0])["correct"].copy()
    right[0] = not right[0]
    rec["steps"][0]["items"]["tasks"][0] = items.pack_correct(right)
    rec["matrix"][0][0] += 1 / len(right) * (1 if right[0] else -1)
    (new / names[0]).write_text(json.dumps(rec))
    out = subprocess.run([sys.executable, str(root / "scripts" / "compare-records"), str(new), str(old)],
                         capture_output=True, text=True, check=True, cwd=root).stdout
    assert "records compared: 2; identical accuracy matrices: 1" in out
    assert "test answers that differ: 1 of" in out
    assert f"largest matrix-entry difference: {100 / len(right):.2f} points ({names[0]})" in out


def test_a_max_eval_sample_belongs_to_its_split_even_when_an_id_is_reused():
    """The ``--max-eval`` sample is kept per split object: a split that takes a freed split's id (train-accuracy
    subsets are made per call) gets its own stratified sample, not the other's."""
    from suite.data.base import Split
    from suite.evaluation.evaluator import Evaluator, stratified_sample

    ev = Evaluator(backbone=None, max_eval=4)
    a = Split(labels=np.array([0] * 8 + [1] * 8), ids=[str(i) for i in range(16)])
    b = Split(labels=np.array([0] * 14 + [1] * 2), ids=[str(i) for i in range(16)])
    ev.eval_indices(a)
    ev._samples[id(b)] = ev._samples.pop(id(a))  # as if b had been allocated where a was
    assert ev.eval_indices(b) == stratified_sample(b.labels, 4, 0)
    assert sorted(set(b.labels[ev.eval_indices(b)])) == [0, 1]


def test_average_ranks_are_scipys_rankdata():
    """The probe's AUROC ranks without importing scipy.stats: the same ranks, ties sharing their mean, bit for bit."""
    from scipy.stats import rankdata

    rng = np.random.default_rng(2)
    for trial in range(300):
        x = np.round(rng.normal(size=int(rng.integers(1, 50))), int(rng.integers(0, 3)))  # ties at 0-2 decimals
        assert np.array_equal(average_ranks(x), rankdata(x))
    assert np.isnan(average_ranks(np.array([0.3, np.nan, 0.1]))).all()
    assert average_ranks(np.array([0.2, 0.1, 0.2])).tolist() == [2.5, 1.0, 2.5]

def test_a_sweep_worker_runs_every_thread_pool_at_its_share_of_the_cores():
    """torch's threads and the BLAS numpy loaded while the worker imported the suite (it read its size from the
    environment before the worker's initialiser ran: OpenBLAS kept one thread per core)."""
    from suite.experiments.sweep import worker_pool, worker_threads

    with worker_pool(1, 1) as pool:
        pools = pool.submit(worker_threads).result(timeout=300)
    assert pools["torch"] == 1
    blas = {k: v for k, v in pools.items() if k != "torch"}
    assert blas and all(v == 1 for v in blas.values()), pools
