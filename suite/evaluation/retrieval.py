"""Image-text retrieval metrics from a similarity matrix ``S`` (images x texts) and a positives matrix ``P``
(``P[i, j]``: text j describes image i; several captions per image, as in the COCO/Flickr Karpathy splits).
Without ``P``, pair i matches text i. As in CLIP_benchmark, a query is recalled at k when any of its positives is
among its k best-scored items; ties count against the query (an item scored equal to the best positive ranks
before it only if strictly higher)."""
from __future__ import annotations

import numpy as np


def _positives(sim: np.ndarray, positives: np.ndarray | None) -> np.ndarray:
    if positives is None:
        if sim.shape[0] != sim.shape[1]:
            raise ValueError(f"a {sim.shape} similarity matrix needs a positives matrix (several texts per image)")
        return np.eye(sim.shape[0], dtype=bool)
    pos = np.asarray(positives, dtype=bool)
    if pos.shape != sim.shape:
        raise ValueError(f"positives {pos.shape} must match the similarity matrix {sim.shape}")
    return pos


def rank_of_best_positive(s: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """Per query (row): how many non-positive items score above its best positive (0 = a positive comes first)."""
    best_pos = np.where(pos, s, -np.inf).max(1, keepdims=True)
    return (np.where(pos, -np.inf, s) > best_pos).sum(1)


def recall_at_k(sim: np.ndarray, ks: tuple[int, ...] = (1, 5, 10), positives: np.ndarray | None = None) -> dict[str, float]:
    """Recall@k both ways: ``i2t`` (each image queries the texts) and ``t2i`` (each text queries the images)."""
    sim = np.asarray(sim, dtype=np.float64)
    pos = _positives(sim, positives)
    out = {}
    for name, s, p in (("i2t", sim, pos), ("t2i", sim.T, pos.T)):
        rank = rank_of_best_positive(s, p)
        for k in ks:
            out[f"{name}_r{k}"] = float((rank < k).mean())
    return out


def confident_mismatch_rate(sim: np.ndarray, delta: float = 0.05, positives: np.ndarray | None = None) -> dict[str, float]:
    """Share of queries whose top-1 item is wrong *and* beats every right one by more than ``delta``."""
    sim = np.asarray(sim, dtype=np.float64)
    pos = _positives(sim, positives)
    out = {}
    for name, s, p in (("i2t", sim, pos), ("t2i", sim.T, pos.T)):
        right = np.where(p, s, -np.inf).max(1)
        best_wrong = np.where(p, -np.inf, s).max(1)
        out[f"{name}_confident_mismatch"] = float(((best_wrong > right) & (best_wrong - right > delta)).mean())
    return out


__all__ = ["rank_of_best_positive", "recall_at_k", "confident_mismatch_rate"]
