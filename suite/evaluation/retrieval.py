"""Image-text retrieval metrics from a similarity matrix ``S`` (images x texts, pair i matches text i)."""
from __future__ import annotations

import numpy as np


def recall_at_k(sim: np.ndarray, ks: tuple[int, ...] = (1, 5, 10)) -> dict[str, float]:
    """Recall@k both ways; ``S[i, j]`` is the score of image i with text j, the right text of image i is j = i."""
    sim = np.asarray(sim, dtype=np.float64)
    out = {}
    for name, s in (("i2t", sim), ("t2i", sim.T)):
        right = np.diag(s)[:, None]
        rank = (s > right).sum(1)  # 0 = retrieved first
        for k in ks:
            out[f"{name}_r{k}"] = float((rank < k).mean())
    return out


def confident_mismatch_rate(sim: np.ndarray, delta: float = 0.05) -> dict[str, float]:
    """Share of queries whose top-1 item is wrong *and* beats the right one by more than ``delta``."""
    sim = np.asarray(sim, dtype=np.float64)
    out = {}
    for name, s in (("i2t", sim), ("t2i", sim.T)):
        right = np.diag(s)
        masked = s.copy()
        np.fill_diagonal(masked, -np.inf)
        best_wrong = masked.max(1)
        out[f"{name}_confident_mismatch"] = float(((best_wrong > right) & (best_wrong - right > delta)).mean())
    return out
