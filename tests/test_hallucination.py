import numpy as np
import pytest

from suite.evaluation.calibration import expected_calibration_error
from suite.evaluation.hallucination import calibrate_thresholds, hijacking, pope
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


def test_ece_perfect_and_overconfident():
    labels = np.array([0, 1, 0, 1])
    assert expected_calibration_error(np.eye(2)[labels], labels) == 0.0
    wrong = np.eye(2)[1 - labels]
    assert expected_calibration_error(wrong, labels) == pytest.approx(1.0)
