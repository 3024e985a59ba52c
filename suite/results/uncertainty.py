"""Intervals that include the test set: seeds and test items together, a paired version for differences, and
McNemar's test on the items two runs share.

Every seed of a configuration is tested on the same images, so the spread over seeds says nothing about how
much a number would move on another draw of test images. The item level is a bootstrap: each resample draws the
test items of every task and control set with replacement (multinomial counts, the same draw for every seed, since
the items are shared), recomputes each seed's accuracy matrix from its item outcomes (:mod:`suite.results.items`)
and the metric from the matrix (:mod:`suite.results.metrics`, one definition); the variance of the seed mean over
these resamples is the item variance. The seed level is Student's t: the variance of the seed mean is the
per-seed values' sample variance over n. The interval is the mean ± √((t·se_seeds)² + (z·se_items)²): Student's
t with n − 1 degrees of freedom where seeds dominate, the normal where items do.

Why not resample seeds too: a percentile bootstrap over 5 seeds is too narrow — for a normal mean its half-width
is about 1.96·√(4/5)·s/√5 against t's 2.78·s/√5, so it covers less than it says (``clsuite coverage``
measures it: docs/concepts/intervals.md states the figures).

Item draws depend only on a fixed seed and the sizes of the item sets, so two groups on the same sequence see
the same draws: their difference is paired over seeds × items.
"""
from __future__ import annotations

from dataclasses import dataclass
from math import comb
from typing import Any

import numpy as np

from suite.results import items, metrics

RESAMPLES = 1000
BOOTSTRAP_SEED = 0
ITEM_METRICS = frozenset(metrics.METRIC_NAMES) | {"zero_shot_retention"}


def item_weights(sizes: list[int], resamples: int = RESAMPLES, seed: int = BOOTSTRAP_SEED) -> list[np.ndarray]:
    """Per item set, ``(resamples, n)`` bootstrap weights (draw counts / n): each row a resample of the set."""
    rng = np.random.default_rng(seed)
    return [rng.multinomial(n, np.full(n, 1.0 / n), size=resamples) / n if n else np.zeros((resamples, 0))
            for n in sizes]


def seed_draws(n_seeds: int, resamples: int = RESAMPLES, seed: int = BOOTSTRAP_SEED) -> np.ndarray:
    """``(resamples, n_seeds)`` indices of seeds drawn with replacement (the former seed level; kept to measure
    its coverage against the one in use)."""
    return np.random.default_rng([seed, 1]).integers(n_seeds, size=(resamples, n_seeds))


def percentile_interval(values: np.ndarray) -> tuple[float, float]:
    lo, hi = np.percentile(values, [2.5, 97.5])
    return float(lo), float(hi)


def percentile_seeds_and_items(per_seed: np.ndarray, seed: int = BOOTSTRAP_SEED) -> tuple[float, float]:
    """The former interval: the percentile interval of the mean over seeds drawn with replacement, one draw per
    item resample (row) of ``per_seed`` ``(resamples, seeds)``. Too narrow at 5 seeds; only for coverage studies."""
    draw = seed_draws(per_seed.shape[1], per_seed.shape[0], seed)
    return percentile_interval(np.take_along_axis(per_seed, draw, 1).mean(1))


def seeds_and_items(observed: np.ndarray, resampled: np.ndarray) -> tuple[float, float]:
    """The 95 % interval of the mean over seeds and test items.

    ``observed`` ``(seeds,)``: each seed's value on the test set as drawn; ``resampled`` ``(resamples, seeds)``:
    the same under item resamples (no rows for the seed level alone). The half-widths of the two levels add in
    quadrature: Student-t over seeds (n − 1 degrees of freedom) and normal over items (the bootstrap's standard
    deviation of the seed mean). Never narrower than either level alone, which Welch–Satterthwaite's pooled
    degrees of freedom can be; exact t when items add nothing. With one seed there is no seed level: items alone."""
    from scipy import stats  # heavy: only when an interval is computed

    observed = np.asarray(observed, np.float64)
    n = observed.size
    centre = float(observed.mean())
    items = float(resampled.mean(1).std(ddof=1)) if resampled.shape[0] > 1 else 0.0
    seeds = float(stats.t.ppf(0.975, n - 1)) * float(observed.std(ddof=1)) / np.sqrt(n) if n > 1 else 0.0
    half = float(np.hypot(seeds, float(stats.norm.ppf(0.975)) * items))
    return centre - half, centre + half


def two_level_interval(scores: np.ndarray, resamples: int = RESAMPLES, seed: int = BOOTSTRAP_SEED,
                       levels: str = "both") -> tuple[float, float]:
    """The 95 % interval of the mean of a ``(seeds, items)`` score table over ``levels``: ``seeds``, ``items``
    or ``both`` (the suite's interval). The one-set case of :class:`ItemTable`, for tests and tables."""
    scores = np.asarray(scores, np.float64)
    observed = scores.mean(1)
    resampled = item_weights([scores.shape[1]], resamples, seed)[0] @ scores.T if levels != "seeds" \
        else np.zeros((0, scores.shape[0]))
    if levels == "items":
        observed = np.full_like(observed, observed.mean())  # no seed variance
    return seeds_and_items(observed, resampled)


@dataclass
class ItemTable:
    """One configuration's item outcomes, aligned over its seeds: per task and per control set a
    ``(seeds, steps, items)`` score array, step 0 being the pretrained model."""

    seeds: list[int]
    tasks: list[np.ndarray]
    controls: dict[str, np.ndarray]
    signature: tuple

    @classmethod
    def of(cls, records: list[dict]) -> "ItemTable | None":
        """The table of ``records`` (seeds of one configuration), or ``None`` unless every record is complete,
        keeps its items, and all were tested on the same items."""
        if not records or any(r["status"] != "complete" or "zero_shot_step" not in r for r in records):
            return None
        signatures = {json_key(r) for r in records}
        if len(signatures) != 1:
            return None
        try:
            per_record = [[s["items"] for s in [r["zero_shot_step"]] + r["steps"]] for r in records]
        except KeyError:
            return None
        n_tasks = len(records[0]["sequence"]["tasks"])
        tasks = [np.stack([[items.scores(step["tasks"][d]) for step in rec] for rec in per_record])
                 for d in range(n_tasks)]
        controls = {c: np.stack([[items.scores(step["controls"][c]) for step in rec] for rec in per_record])
                    for c in per_record[0][0]["controls"]}
        return cls([r["seed"] for r in records], tasks, controls, signatures.pop())

    def sizes(self) -> list[int]:
        return [a.shape[-1] for a in self.tasks] + [a.shape[-1] for a in self.controls.values()]

    def resampled_accuracies(self, resamples: int = RESAMPLES, seed: int = BOOTSTRAP_SEED
                             ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Under each item resample: tasks ``(resamples, seeds, steps, tasks)`` and per control
        ``(resamples, seeds, steps)``."""
        return self.accuracies(item_weights(self.sizes(), resamples, seed))

    def observed_accuracies(self) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """The accuracies on the test set as drawn, shaped as one resample: every item weighs 1/n."""
        return self.accuracies([np.full((1, n), 1.0 / n) if n else np.zeros((1, 0)) for n in self.sizes()])

    def accuracies(self, w: list[np.ndarray]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Accuracies under per-set item weights ``w`` (one ``(resamples, n)`` array per task, then control)."""
        t = len(self.tasks)
        acc = np.stack([np.einsum("bn,ksn->bks", w[d], x) for d, x in enumerate(self.tasks)], -1)
        ctl = {c: np.einsum("bn,ksn->bks", w[t + i], x) for i, (c, x) in enumerate(self.controls.items())}
        return acc, ctl


def json_key(rec: dict) -> tuple:
    """What must match for records to share test items: the sequence, its data manifests, the evaluation sample."""
    seq = rec["sequence"]
    return (seq["name"], seq.get("version"), tuple(sorted(seq.get("manifests", {}).items())),
            rec.get("config", {}).get("max_eval"))


def mean_of_numbers(values: np.ndarray) -> np.ndarray:
    """The mean over the first axis of the entries that are numbers: ``np.nanmean``'s sum and division (the same
    numbers), NaN where a column holds none, without nanmean's warning for those columns."""
    known = ~np.isnan(values)
    counts = known.sum(0)
    return np.where(counts > 0, np.where(known, values, 0.0).sum(0) / np.maximum(counts, 1), np.nan)


def metric_per_seed(acc: np.ndarray, controls: dict[str, np.ndarray], name: str) -> np.ndarray:
    """``(resamples, seeds)`` values of an item metric from resampled accuracies."""
    if name == "zero_shot_retention":
        if not controls:
            return np.full(acc.shape[:2], np.nan)
        ratios = []
        for a in controls.values():
            ref = a[..., 0]
            ratios.append(np.where(ref > 0, a[..., -1] / np.where(ref > 0, ref, 1.0), np.nan))
        return mean_of_numbers(np.stack(ratios))  # a resample whose control reference is 0 has no ratio
    values = metrics.batch_aggregate(acc[..., 1:, :], acc[..., 0, :])[name]
    if values is None:
        return np.full(acc.shape[:2], np.nan)
    return values


class Resampled:
    """A group's item tables resampled once (cached), from which every item metric's interval follows."""

    def __init__(self, table: ItemTable, resamples: int = RESAMPLES, seed: int = BOOTSTRAP_SEED):
        self.table, self.resamples, self.seed = table, resamples, seed
        self.acc, self.controls = table.resampled_accuracies(resamples, seed)
        self.observed_acc, self.observed_controls = table.observed_accuracies()
        self._cache: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def per_seed(self, name: str) -> np.ndarray:
        """``(resamples, seeds)`` values of ``name`` under the item resamples."""
        return self._values(name)[1]

    def observed(self, name: str) -> np.ndarray:
        """``(seeds,)`` values of ``name`` on the test set as drawn (the records' own values)."""
        return self._values(name)[0]

    def _values(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        if name not in self._cache:
            self._cache[name] = (metric_per_seed(self.observed_acc, self.observed_controls, name)[0],
                                 metric_per_seed(self.acc, self.controls, name))
        return self._cache[name]

    def interval(self, name: str) -> tuple[float, float] | None:
        o, v = self._values(name)
        return None if np.isnan(v).any() or np.isnan(o).any() else seeds_and_items(o, v)


def paired_interval(a: Resampled, b: Resampled, name: str) -> tuple[float, float] | None:
    """The 95 % interval of ``a − b`` over their shared seeds and the items both were tested on (same draws)."""
    if a.table.signature != b.table.signature or a.resamples != b.resamples or a.seed != b.seed:
        return None
    shared = [s for s in a.table.seeds if s in b.table.seeds]
    if not shared:
        return None
    ia = [a.table.seeds.index(s) for s in shared]
    ib = [b.table.seeds.index(s) for s in shared]
    d = a.per_seed(name)[:, ia] - b.per_seed(name)[:, ib]
    o = a.observed(name)[ia] - b.observed(name)[ib]
    return None if np.isnan(d).any() or np.isnan(o).any() else seeds_and_items(o, d)


def mcnemar(a: np.ndarray, b: np.ndarray) -> dict[str, Any]:
    """McNemar's exact test on paired outcomes (True = right): ``a_only`` items only ``a`` got right, ``b_only``
    the reverse, and the two-sided p-value of a binomial(``a_only + b_only``, 1/2) as extreme as observed."""
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    if a.shape != b.shape:
        raise ValueError(f"paired outcomes must align: {a.shape} vs {b.shape}")
    n10, n01 = int((a & ~b).sum()), int((~a & b).sum())
    n = n10 + n01
    k = min(n10, n01)
    p = 1.0 if n == 0 else min(1.0, 2 * sum(comb(n, i) for i in range(k + 1)) / 2 ** n)
    return {"a_only": n10, "b_only": n01, "p": p}


def final_hits(rec: dict) -> np.ndarray:
    """Every task's test outcomes after the last step, in task order (what McNemar pairs)."""
    return np.concatenate([items.hits(e) for e in rec["steps"][-1]["items"]["tasks"]])


__all__ = ["ITEM_METRICS", "ItemTable", "RESAMPLES", "Resampled", "final_hits", "item_weights", "mcnemar",
           "paired_interval", "percentile_interval", "percentile_seeds_and_items", "seed_draws", "seeds_and_items",
           "two_level_interval"]
