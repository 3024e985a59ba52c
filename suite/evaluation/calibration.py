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
    ok = np.asarray(correct, dtype=np.float64)
    n = len(conf)
    if n == 0:
        return 0.0
    order = np.argsort(conf, kind="stable")
    ece = 0.0
    for part in np.array_split(order, min(bins, n)):
        if len(part):
            ece += len(part) / n * abs(ok[part].mean() - conf[part].mean())
    return float(ece)


def ece_with_interval(confidence: np.ndarray, correct: np.ndarray, bins: int = 15, resamples: int = 200,
                      seed: int = 0) -> dict[str, float | int]:
    """ECE and its 95 % percentile bootstrap interval over resampled predictions."""
    conf, ok = np.asarray(confidence, np.float64), np.asarray(correct, bool)
    value = expected_calibration_error(conf, ok, bins)
    rng = np.random.default_rng(seed)
    boots = [expected_calibration_error(conf[i], ok[i], bins)
             for i in (rng.integers(0, len(conf), len(conf)) for _ in range(resamples))] if len(conf) else [0.0]
    low, high = np.percentile(boots, [2.5, 97.5])
    return {"value": value, "low": float(low), "high": float(high), "bins": int(min(bins, max(1, len(conf)))),
            "n": int(len(conf))}
