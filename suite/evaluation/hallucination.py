"""Cross-modal hallucination, defined once here. All functions take score matrices, so they are testable
on hand-built numbers and reusable for any model.

These are the suite's own definitions: the PEGP authors released no hallucination evaluation.

1. **Absent-concept false positives (CLIP-POPE).** For images with known object lists and a concept
   vocabulary, ``scores[i, c]`` is the image-text score of image i with the text naming concept c. The probe is
   a fixed, seeded sample with positives for every concept it scores, split in two disjoint halves: at every
   step, a per-concept threshold is fitted on the *calibration* half (:func:`calibrate_thresholds`: the
   threshold maximising F1 for the concept) and the *scored* half is answered with it, so thresholds never see
   the scored images and follow the model's score scale as training shifts it. Questions are all present
   concepts plus an equal number of absent ones drawn three ways, as in POPE (Li et al., 2023): *random*,
   *popular* (most frequent concepts), *adversarial* (absent concepts sharing a word — colour or shape — with a
   present one). Reported per strategy: precision, recall, F1, yes-ratio, false-positive rate; and the
   threshold-free macro AUROC of concept presence (:func:`concept_auroc`), which the boards rank on. It detects
   a model that scores absent concepts above present ones; it cannot tell *which* wrong concept a caption
   would contain, and it needs images with ground-truth object lists (the procedural world).
2. **Seen-class hijacking.** Images of classes that are *not learned* — whose names share no word (after
   normalisation and the sequence's synonym list) with any learned class — from later tasks and control sets,
   classified among a head fixed per step (every learned class plus every such unlearned class): the share
   predicted as a learned class, and the mean probability of those predictions. Where no class qualifies the
   measure is ``not_applicable``. It detects a model pulled towards what it was trained on; it cannot separate
   that from plain confusion between similar classes.
3. **Retrieval confident mismatch** — see :func:`suite.evaluation.retrieval.confident_mismatch_rate`.
"""
from __future__ import annotations

import re
from collections import Counter
from functools import lru_cache
from typing import Iterable

import numpy as np

from suite.results.uncertainty import mean_of_numbers

_ARTICLES = {"a", "an", "the"}

STRATEGIES = ("random", "popular", "adversarial")


def calibrate_thresholds(scores: np.ndarray, present: np.ndarray) -> np.ndarray:
    """Per-concept threshold maximising F1 of ``scores > t`` against ``present`` (bool, same shape)."""
    scores, present = np.asarray(scores, np.float64), np.asarray(present, bool)
    th = np.empty(scores.shape[1])
    for c in range(scores.shape[1]):
        s, y = scores[:, c], present[:, c]
        cands, which = np.unique(s, return_inverse=True)
        tries = np.concatenate([[cands[0] - 1e-9], (cands[:-1] + cands[1:]) / 2])
        # try k says yes to every score >= cands[k]: counts from the top, one pass instead of one per try
        said_yes = np.cumsum(np.bincount(which, minlength=len(cands))[::-1])[::-1]
        right_yes = np.cumsum(np.bincount(which, weights=y, minlength=len(cands))[::-1])[::-1]
        f1 = 2 * right_yes / np.maximum(1, said_yes + y.sum())
        th[c] = tries[int(np.argmax(f1))]
    return th


def _questions(present: np.ndarray, concepts: list[str], strategy: str, rng: np.random.Generator) -> list[tuple[int, int, bool]]:
    freq = Counter(int(c) for c in np.argwhere(present)[:, 1])
    popular_order = sorted(range(len(concepts)), key=lambda c: (-freq.get(c, 0), c))
    words = [set(c.split()) for c in concepts]
    qs = []
    for i in range(present.shape[0]):
        pos = list(np.flatnonzero(present[i]))
        absent = [c for c in range(len(concepts)) if not present[i, c]]
        if strategy == "random":
            neg = list(rng.permutation(absent)[: len(pos)]) if absent else []
        elif strategy == "popular":
            missing = set(absent)
            neg = [c for c in popular_order if c in missing][: len(pos)]
        elif strategy == "adversarial":
            attrs = set().union(*(words[c] for c in pos))
            close = [c for c in absent if attrs & words[c]]
            near = set(close)
            far = [c for c in absent if c not in near]
            neg = (list(rng.permutation(close)) + list(rng.permutation(far)))[: len(pos)]
        else:
            raise ValueError(f"unknown POPE strategy {strategy!r}")
        qs += [(i, int(c), True) for c in pos] + [(i, int(c), False) for c in neg]
    return qs


def questions(present: np.ndarray, concepts: list[str], strategy: str,
              seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """POPE's questions for ``present`` under ``strategy`` as arrays: image, concept, whether it is present. They
    depend on the probe (object lists, concepts, seed), never on the scores: a run asks the same ones at every
    step, so they are drawn once per process and probe."""
    present = np.asarray(present, bool)
    return _drawn_questions(present.shape, present.tobytes(), tuple(concepts), strategy, seed)


@lru_cache(maxsize=32)
def _drawn_questions(shape: tuple[int, ...], present: bytes, concepts: tuple[str, ...], strategy: str,
                     seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    qs = _questions(np.frombuffer(present, bool).reshape(shape), list(concepts), strategy, np.random.default_rng(seed))
    arr = np.array(qs, dtype=np.int64).reshape(-1, 3)
    truth = arr[:, 2].astype(bool)
    for a in (arr, truth):
        a.setflags(write=False)  # shared by every step that asks them
    return arr[:, 0], arr[:, 1], truth


def pope(scores: np.ndarray, present: np.ndarray, thresholds: np.ndarray, concepts: list[str],
         seed: int = 0) -> dict[str, dict[str, float]]:
    """POPE-style yes/no evaluation of an image-concept score matrix under the three negative strategies."""
    scores, present = np.asarray(scores, np.float64), np.asarray(present, bool)
    out = {}
    thresholds = np.asarray(thresholds, np.float64)
    for strategy in STRATEGIES:
        image, concept, truth = questions(present, concepts, strategy, seed)
        if not len(truth):
            continue
        yes = scores[image, concept] > thresholds[concept]
        tp, fp = int((yes & truth).sum()), int((yes & ~truth).sum())
        fn = int((~yes & truth).sum())
        prec = tp / (tp + fp) if tp + fp else 0.0
        rec = tp / (tp + fn) if tp + fn else 0.0
        out[strategy] = {"precision": prec, "recall": rec, "f1": 2 * prec * rec / (prec + rec) if prec + rec else 0.0,
                         "yes_ratio": float(yes.mean()), "accuracy": float((yes == truth).mean()),
                         "false_positive_rate": float(yes[~truth].mean()) if (~truth).any() else 0.0}
    return out


def name_words(name: str, synonyms: Iterable[Iterable[str]] = ()) -> set[str]:
    """The words of a class name for the hijacking rule: lower case, split on non-alphanumerics, articles
    dropped, each word replaced by the first word of its synonym group (``synonyms``: groups of words)."""
    canon = {w.lower(): str(list(group)[0]).lower() for group in synonyms for w in group}
    return {canon.get(w, w) for w in re.split(r"[^0-9a-z]+", name.lower()) if w and w not in _ARTICLES}


def concept_auroc(scores: np.ndarray, present: np.ndarray) -> float | None:
    """Mean over concepts (with both present and absent images) of the AUROC of ``scores`` for ``present``:
    the chance a present concept outscores an absent one; threshold-free, so a shifted score scale leaves it
    unchanged while a better ranking raises it."""
    scores, present = np.asarray(scores, np.float64), np.asarray(present, bool)
    aucs = []
    for c in range(scores.shape[1]):
        y, s = present[:, c], scores[:, c]
        pos, neg = int(y.sum()), int((~y).sum())
        if pos and neg:
            ranks = average_ranks(s)
            aucs.append((ranks[y].sum() - pos * (pos + 1) / 2) / (pos * neg))
    return float(np.mean(aucs)) if aucs else None


def average_ranks(x: np.ndarray) -> np.ndarray:
    """Ranks from 1, tied values sharing their mean rank: ``scipy.stats.rankdata(x)`` to the last bit (tested),
    without importing ``scipy.stats`` (half a second of every run's start on a small CPU). Any NaN makes every
    rank NaN, as ``rankdata``'s default does."""
    x = np.asarray(x, np.float64)
    if np.isnan(x).any():
        return np.full(len(x), np.nan)
    order = np.argsort(x, kind="mergesort")
    sorted_x = x[order]
    first = np.concatenate([[True], sorted_x[1:] != sorted_x[:-1]])  # where each group of equal values starts
    starts = np.flatnonzero(first)
    ends = np.append(starts[1:], len(x))  # a group holds ranks starts+1 .. ends
    ranks = np.empty(len(x))
    ranks[order] = (0.5 * (starts + ends + 1))[np.cumsum(first) - 1]
    return ranks


def concept_auroc_interval(scores: np.ndarray, present: np.ndarray, seed: int = 0,
                           resamples: int = 1000) -> list[float] | None:
    """The 95 % bootstrap interval of :func:`concept_auroc` over the scored images (drawn with replacement,
    seeded): how far the AUROC would move on another draw of probe images. Pairwise, so ties count one half,
    as the rank formula does.

    The resampling weights are drawn once per process and probe size (they do not depend on the scores). Every
    weight is a whole count and a tie counts one half, so each sum below is exact in float64, in any order."""
    scores, present = np.asarray(scores, np.float64), np.asarray(present, bool)
    n = len(scores)
    if n == 0:
        return None
    w = _bootstrap_weights(n, seed, resamples)  # (n, resamples): image i's count in each resample
    aucs = []
    for c in range(scores.shape[1]):
        y, s = present[:, c], scores[:, c]
        if not y.any() or y.all():
            continue
        sp = s[y]
        wins = (sp[:, None] > s[None, :]) + 0.5 * (sp[:, None] == s[None, :])
        wins[:, y] = 0.0  # pairs are (present, absent)
        wp = w[y]
        num = (wp * (wins @ w)).sum(0)
        wp_total = wp.sum(0)
        den = wp_total * (n - wp_total)  # each resample draws n images
        aucs.append(np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan))
    if not aucs:
        return None
    # a resample may draw no (present, absent) pair of a concept; on a tiny probe, of any concept: left out
    macro = mean_of_numbers(np.stack(aucs))
    macro = macro[~np.isnan(macro)]
    if not len(macro):
        return None
    lo, hi = np.percentile(macro, [2.5, 97.5])
    return [float(lo), float(hi)]


@lru_cache(maxsize=8)
def _bootstrap_weights(n: int, seed: int, resamples: int) -> np.ndarray:
    """How often each of ``n`` images is drawn in each resample (seeded; the same at every step of a run)."""
    w = np.ascontiguousarray(np.random.default_rng([seed, 7]).multinomial(
        n, np.full(n, 1.0 / n), size=resamples).T, dtype=np.float64)
    w.setflags(write=False)
    return w


def pope_step(cal_scores: np.ndarray, cal_present: np.ndarray, scores: np.ndarray, present: np.ndarray,
              concepts: list[str], seed: int = 0) -> dict:
    """One step's CLIP-POPE: thresholds fitted on the calibration half, questions answered on the scored half."""
    out: dict = dict(pope(scores, present, calibrate_thresholds(cal_scores, cal_present), concepts, seed))
    out["auroc"] = concept_auroc(scores, present)
    out["auroc_interval"] = concept_auroc_interval(scores, present, seed)
    return out


def hijacking(probs: np.ndarray, learned: np.ndarray) -> dict[str, float]:
    """``probs``: (N, C) over learned ∪ own classes for images of *unlearned* classes; ``learned``: bool (C,)."""
    probs = np.asarray(probs, np.float64)
    learned = np.asarray(learned, bool)
    if len(probs) == 0:
        return {"rate": 0.0, "confidence": 0.0}
    pred = probs.argmax(1)
    hij = learned[pred]
    return {"rate": float(hij.mean()), "confidence": float(probs.max(1)[hij].mean()) if hij.any() else 0.0}
