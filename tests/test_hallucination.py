import numpy as np
import pytest

from suite.evaluation.calibration import ece_with_interval, expected_calibration_error
from suite.evaluation.hallucination import calibrate_thresholds, concept_auroc, hijacking, name_words, pope, pope_step
from suite.evaluation.retrieval import confident_mismatch_rate, recall_at_k

CONCEPTS = ["red circle", "blue circle", "red square", "green star"]


def test_pope_on_hand_built_scores():
    present = np.array([[1, 0, 0, 0], [0, 0, 1, 0]], bool)
    # image 0 hallucinates "blue circle" (shares 'circle'); image 1 is clean
    scores = np.array([[0.9, 0.8, 0.1, 0.1], [0.1, 0.1, 0.9, 0.2]])
    th = np.full(4, 0.5)
    res = pope(scores, present, th, CONCEPTS)
    adv = res["adversarial"]
    # adversarial negatives: image 0 -> a concept sharing 'red' or 'circle' ... one of blue circle / red square
    assert adv["recall"] == 1.0
    assert res["popular"]["yes_ratio"] >= 0.5
    # the false positive appears whenever "blue circle" is asked for image 0
    all_fp = [r["false_positive_rate"] for r in res.values()]
    assert max(all_fp) == 0.5 and min(all_fp) == 0.0


def test_thresholds_calibrated_to_best_f1():
    scores = np.array([[0.2], [0.4], [0.6], [0.8]])
    present = np.array([[0], [0], [1], [1]], bool)
    assert calibrate_thresholds(scores, present)[0] == pytest.approx(0.5)


def test_hijacking_rate_and_confidence():
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8], [0.4, 0.5, 0.1]])
    learned = np.array([True, True, False])
    h = hijacking(probs, learned)
    assert h["rate"] == pytest.approx(2 / 3) and h["confidence"] == pytest.approx((0.7 + 0.5) / 2)


def test_retrieval_recall_and_confident_mismatch():
    sim = np.array([[0.9, 0.1, 0.0], [0.8, 0.5, 0.1], [0.0, 0.1, 0.7]])
    r = recall_at_k(sim, ks=(1, 2))
    assert r["i2t_r1"] == pytest.approx(2 / 3) and r["i2t_r2"] == 1.0
    assert r["t2i_r1"] == pytest.approx(1.0)
    cm = confident_mismatch_rate(sim, delta=0.2)
    assert cm["i2t_confident_mismatch"] == pytest.approx(1 / 3)  # image 1: 0.8 vs 0.5
    assert confident_mismatch_rate(sim, delta=0.5)["i2t_confident_mismatch"] == 0.0


def test_ece_equal_mass_bins_and_interval():
    assert expected_calibration_error(np.ones(4), np.ones(4, bool)) == 0.0
    assert expected_calibration_error(np.ones(4), np.zeros(4, bool)) == pytest.approx(1.0)
    # equal-mass: 4 predictions, 2 bins of 2 -> |0.5-0.35| * .5 + |1-0.95| * .5
    conf, ok = np.array([0.3, 0.4, 0.9, 1.0]), np.array([1, 0, 1, 1], bool)
    assert expected_calibration_error(conf, ok, bins=2) == pytest.approx(0.5 * 0.15 + 0.5 * 0.05)
    rng = np.random.default_rng(0)
    conf = rng.uniform(0.5, 1, 400)
    res = ece_with_interval(conf, rng.uniform(size=400) < conf)  # calibrated by construction
    assert res["low"] <= res["value"] <= res["high"] and res["high"] - res["low"] < 0.15 and res["n"] == 400


def test_auroc_improves_with_ranking_while_fixed_thresholds_degrade():
    """Training shifts the score scale up and improves the ranking: the fixed-threshold false-positive rate
    rises, the threshold-free AUROC and the per-step calibrated F1 improve."""
    rng = np.random.default_rng(0)
    present = rng.uniform(size=(200, 6)) < 0.3
    before = present * 0.10 + rng.normal(0, 0.10, present.shape)
    after = present * 0.30 + rng.normal(0, 0.10, present.shape) + 0.25  # better separated, shifted scale
    concepts = [f"c{i}" for i in range(6)]
    fixed = calibrate_thresholds(before[:100], present[:100])
    fpr_before = pope(before[100:], present[100:], fixed, concepts)["random"]["false_positive_rate"]
    fpr_after = pope(after[100:], present[100:], fixed, concepts)["random"]["false_positive_rate"]
    assert fpr_after > fpr_before  # the number the board used to rank on gets worse
    assert concept_auroc(after, present) > concept_auroc(before, present) + 0.1
    step_before = pope_step(before[:100], present[:100], before[100:], present[100:], concepts)
    step_after = pope_step(after[:100], present[:100], after[100:], present[100:], concepts)
    assert step_after["auroc"] > step_before["auroc"]
    assert step_after["random"]["f1"] > step_before["random"]["f1"]
    assert step_after["random"]["false_positive_rate"] <= step_before["random"]["false_positive_rate"]


def test_auroc_by_hand():
    scores = np.array([[0.9], [0.2], [0.5], [0.1]])
    present = np.array([[1], [0], [0], [1]], bool)
    assert concept_auroc(scores, present) == pytest.approx(2 / 4)  # pairs (p, n): (0.9 > 0.2, 0.5), (0.1 < both)


def test_name_words_for_hijacking():
    assert name_words("a Red Circle") == {"red", "circle"}
    assert name_words("t-shirt", [["shirt", "t-shirt", "tee"]]) == {"t", "shirt"}
    assert name_words("tee", [["shirt", "tee"]]) == {"shirt"}
    assert not name_words("purple heart") & name_words("red circle")


def test_retrieval_against_a_positives_matrix_with_five_captions_per_image():
    """Two images, five captions each (texts 0-4 describe image 0, 5-9 image 1); values worked by hand."""
    pos = np.zeros((2, 10), bool)
    pos[0, :5] = pos[1, 5:] = True
    sim = np.array([[0.1, 0.2, 0.9, 0.0, 0.0, 0.95, 0.3, 0.3, 0.3, 0.3],   # image 0: one wrong text (0.95) above its best (0.9)
                    [0.5, 0.5, 0.5, 0.5, 0.5, 0.1, 0.2, 0.6, 0.1, 0.1]])   # image 1: best positive 0.6 beats all
    r = recall_at_k(sim, ks=(1, 2), positives=pos)
    assert r["i2t_r1"] == 0.5 and r["i2t_r2"] == 1.0
    # texts as queries over 2 images: text j is recalled at 1 when its image scores highest
    # column maxima: t0 .1<.5 ✗, t1 .2<.5 ✗, t2 .9>.5 ✓, t3 0<.5 ✗, t4 0<.5 ✗, t5 .1<.95 ✗, t6 .2<.3 ✗, t7 .6>.3 ✓, t8 ✗, t9 ✗
    assert r["t2i_r1"] == 0.2 and r["t2i_r2"] == 1.0
    cm = confident_mismatch_rate(sim, delta=0.04, positives=pos)
    assert cm["i2t_confident_mismatch"] == 0.5  # image 0: 0.95 - 0.9 = 0.05 > 0.04
    assert confident_mismatch_rate(sim, delta=0.06, positives=pos)["i2t_confident_mismatch"] == 0.0
    # identity positives reproduce the one-caption case
    sq = sim[:, [2, 7]]
    assert recall_at_k(sq, ks=(1,)) == recall_at_k(sq, ks=(1,), positives=np.eye(2, dtype=bool))


def test_retrieval_in_galleries_ranks_each_query_within_its_own_block():
    """With ``gallery``, R@K and the confident mismatch are those of each block of consecutive images (and their
    captions) evaluated on its own, averaged over the blocks: what COCO's 1K test reports over its folds."""
    import torch

    from suite.data.base import Split
    from suite.evaluation.evaluator import Evaluator

    rng = np.random.default_rng(0)
    n, gallery = 12, 4
    captions = [tuple(f"scene {i} caption {k}" for k in range(1 + i % 2)) for i in range(n)]  # one or two each
    owner = np.repeat(np.arange(n), [len(c) for c in captions])
    sim = rng.normal(size=(n, len(owner)))
    split = Split(labels=np.zeros(n, np.int64), ids=[str(i) for i in range(n)], images=np.zeros((n, 2, 2, 3), np.uint8),
                  captions=captions)
    ev = Evaluator(backbone=None)
    ev.similarity = lambda img, text: torch.as_tensor(sim[np.asarray(img)][:, np.isin(owner, np.asarray(img))])
    whole = ev.retrieval(np.arange(n), split, gallery=gallery)
    blocks = [ev.retrieval(np.arange(b, b + gallery), split.subset(list(range(b, b + gallery))))
              for b in range(0, n, gallery)]
    for key in ("i2t_r1", "t2i_r1", "i2t_r5", "i2t_confident_mismatch", "t2i_confident_mismatch", "r1_mean"):
        assert whole[key] == pytest.approx(np.mean([b[key] for b in blocks]))
    for i, name in enumerate(("image", "text")):
        assert np.array_equal(whole["ranks"][i], np.concatenate([b["ranks"][i] for b in blocks])), name
    one = ev.retrieval(np.arange(n), split)  # one gallery of every image: more candidates, never a better rank
    assert (one["ranks"][0] >= whole["ranks"][0]).all() and (one["ranks"][0] > whole["ranks"][0]).any()
