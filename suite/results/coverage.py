"""How often the suite's 95 % intervals contain what they claim to, measured by simulation.

Two studies, both deterministic for a fixed seed:

* **A pool of real runs** of one configuration (many seeds of one sequence, method, PET): draw ``k`` distinct
  seeds, compute each interval from those ``k`` records alone, and count how often it contains the pool's mean.
  All seeds share the test items, so this measures the seed level (the item level only widens an interval
  here). Drawing from a finite pool of N makes the mean of k vary by (N − k)/(N − 1) less than from an endless
  supply of seeds, so an exact interval covers a little more than 95 % here: :func:`finite_pool_nominal`.
* **A synthetic model** where the truth is known at both levels: a seed's ability and an item's difficulty are
  normal on the logit scale, an answer is right with probability sigmoid(ability − difficulty + offset); each
  simulated experiment draws a fresh test set of ``n`` items and ``k`` seeds, and the truth is the expected
  accuracy over seeds and items (a large Monte Carlo integral).

Each interval kind is reported: the one the suite uses (Student-t over seeds and the item bootstrap, combined;
:func:`suite.results.uncertainty.seeds_and_items`), the former two-level percentile bootstrap, and the seed level
alone by t and by the percentile bootstrap.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from suite.results.analysis import markdown_table
from suite.results.uncertainty import (
    Resampled,
    item_weights,
    percentile_interval,
    percentile_seeds_and_items,
    seed_draws,
    seeds_and_items,
)

KINDS = {
    "t+items": "Student-t over seeds ⊕ bootstrap over items (the suite's interval)",
    "bootstrap": "two-level percentile bootstrap over seeds and items (the former interval)",
    "t seeds": "Student-t over seeds alone",
    "bootstrap seeds": "percentile bootstrap over seeds alone",
}


@dataclass(frozen=True)
class Coverage:
    """The share of ``trials`` intervals of one kind that contained the truth, and their mean half-width."""

    kind: str
    covered: float
    half_width: float
    trials: int


def _intervals(observed: np.ndarray, resampled: np.ndarray, seed: int) -> dict[str, tuple[float, float]]:
    """Every kind's interval from one experiment: per-seed values as observed and under item resamples."""
    no_items = np.zeros((0, observed.size))
    seed_only = seed_draws(observed.size, resampled.shape[0], seed)
    return {"t+items": seeds_and_items(observed, resampled),
            "bootstrap": percentile_seeds_and_items(resampled, seed),
            "t seeds": seeds_and_items(observed, no_items),
            "bootstrap seeds": percentile_interval(observed[seed_only].mean(1))}


def _tally(intervals: list[dict[str, tuple[float, float]]], truth: list[float]) -> list[Coverage]:
    out = []
    for kind in KINDS:
        lo = np.array([iv[kind][0] for iv in intervals])
        hi = np.array([iv[kind][1] for iv in intervals])
        t = np.asarray(truth)
        out.append(Coverage(kind, float(((lo <= t) & (t <= hi)).mean()), float(((hi - lo) / 2).mean()), len(t)))
    return out


def pool_coverage(pool: Resampled, metric: str, k: int = 5, trials: int = 1000, seed: int = 0) -> list[Coverage]:
    """Coverage of the pool's mean of ``metric`` by intervals computed from ``k`` seeds drawn from the pool."""
    observed, resampled = pool.observed(metric), pool.per_seed(metric)
    if np.isnan(observed).any() or np.isnan(resampled).any():
        raise ValueError(f"{metric}: not defined for every record of the pool")
    if observed.size < 2 * k:
        raise ValueError(f"the pool has {observed.size} seeds; draws of {k} need at least {2 * k}")
    rng = np.random.default_rng(seed)
    truth = float(observed.mean())
    intervals = []
    for trial in range(trials):
        idx = rng.choice(observed.size, size=k, replace=False)
        intervals.append(_intervals(observed[idx], resampled[:, idx], seed + trial))
    return _tally(intervals, [truth] * trials)


def finite_pool_nominal(pool: int, k: int) -> float:
    """The coverage of an exact 95 % t-interval of normal data when ``k`` of ``pool`` values are drawn without
    replacement and the truth is the pool's mean: the reference the pool study's t column should meet."""
    from scipy import stats

    widen = np.sqrt((pool - 1) / (pool - k))
    return float(2 * stats.t.cdf(stats.t.ppf(0.975, k - 1) * widen, k - 1) - 1)


def synthetic_coverage(k: int = 5, n_items: int = 300, seed_sd: float = 0.4, item_sd: float = 1.0,
                       offset: float = 0.5, trials: int = 400, resamples: int = 500, seed: int = 0
                       ) -> list[Coverage]:
    """Coverage of the true expected accuracy under the logit model above (a fresh test set per trial)."""
    rng = np.random.default_rng(seed)
    big = rng.normal(0, seed_sd, 4000)[:, None] - rng.normal(0, item_sd, 4000)[None, :] + offset
    truth = float((1.0 / (1.0 + np.exp(-big))).mean())
    intervals = []
    for trial in range(trials):
        ability = rng.normal(0, seed_sd, k)
        difficulty = rng.normal(0, item_sd, n_items)
        p = 1.0 / (1.0 + np.exp(-(ability[:, None] - difficulty[None, :] + offset)))
        scores = (rng.random(p.shape) < p).astype(np.float64)
        resampled = item_weights([n_items], resamples, seed + trial)[0] @ scores.T
        intervals.append(_intervals(scores.mean(1), resampled, seed + trial))
    return _tally(intervals, [truth] * trials)


def coverage_table(rows: dict[str, list[Coverage]]) -> str:
    """A Markdown table: one row per study, per kind the coverage and the mean half-width (percent points)."""
    lines = markdown_table(["study", *KINDS], [[study] + [f"{100 * c.covered:.1f} % (± {100 * c.half_width:.1f})"
                                                         for c in cov] for study, cov in rows.items()])
    lines.append("")
    lines.append("(share of intervals that contain the truth; ± their mean half-width in points; "
                 + "; ".join(f"{k}: {v}" for k, v in KINDS.items()) + ")")
    return "\n".join(lines)


__all__ = ["Coverage", "KINDS", "coverage_table", "finite_pool_nominal", "pool_coverage", "synthetic_coverage"]
