"""Expected calibration error (Guo et al., 2017) with adaptive (equal-mass) bins, and its bootstrap interval.

ECE = sum over bins of (bin share) · |accuracy − mean confidence|. Equal-width bins leave most bins nearly empty
for a confident model, and on a few dozen images per task ECE then sits at its small-sample floor; the suite
pools every test image of a step and uses equal-mass bins (each holds the same number of predictions), and
reports a percentile bootstrap interval so a reader can see when two ECEs cannot be told apart.
"""
from __future__ import annotations

import numpy as np


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, bins: int = 15) -> float:
    """ECE of predictions with top-1 ``confidence`` (N,) and ``correct`` (N,), equal-mass bins; 0 for no data."""
    conf = np.asarray(confidence, dtype=np.float64)
    if len(conf) == 0:
        return 0.0
    return float(_ece_rows(conf[None], np.asarray(correct, dtype=np.float64)[None], bins)[0])


def _ece_rows(conf: np.ndarray, ok: np.ndarray, bins: int) -> np.ndarray:
    """ECE of every row of ``conf`` and ``ok`` (R, N), N > 0: the bins are ``np.array_split``'s of the sorted
    predictions, and a bin's share times ``|accuracy - confidence|`` is ``|Σ ok - Σ conf| / N`` over the bin."""
    n = conf.shape[1]
    order = np.argsort(conf, axis=1, kind="stable")
    k = min(bins, n)
    sizes = np.full(k, n // k)
    sizes[: n % k] += 1
    edges = np.concatenate([[0], np.cumsum(sizes)])
    def bin_sums(x: np.ndarray) -> np.ndarray:
        total = np.concatenate([np.zeros((len(x), 1)), np.cumsum(np.take_along_axis(x, order, 1), 1)], 1)
        return total[:, edges[1:]] - total[:, edges[:-1]]
    return np.abs(bin_sums(ok) - bin_sums(conf)).sum(1) / n


def ece_with_interval(confidence: np.ndarray, correct: np.ndarray, bins: int = 15, resamples: int = 200,
                      seed: int = 0) -> dict[str, float | int]:
    """ECE and its 95 % percentile bootstrap interval over resampled predictions."""
    conf, ok = np.asarray(confidence, np.float64), np.asarray(correct, bool)
    value = expected_calibration_error(conf, ok, bins)
    rng = np.random.default_rng(seed)
    draws = np.stack([rng.integers(0, len(conf), len(conf)) for _ in range(resamples)]) if len(conf) else None
    boots = _ece_rows(conf[draws], ok[draws].astype(np.float64), bins) if draws is not None else [0.0]
    low, high = np.percentile(boots, [2.5, 97.5])
    return {"value": value, "low": float(low), "high": float(high), "bins": int(min(bins, max(1, len(conf)))),
            "n": int(len(conf))}
