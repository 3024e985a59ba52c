"""Intervals that include the test set: a two-level bootstrap over seeds and test items, a paired version for
differences, and McNemar's test on the items two runs share.

Every seed of a configuration is tested on the same images, so the spread over seeds says nothing about how
much a number would move on another draw of test images. Here each resample draws the test items of every task
and control set with replacement (multinomial counts, the same draw for every seed, since the items are shared)
and the seeds with replacement, recomputes each seed's accuracy matrix from its item outcomes
(:mod:`suite.results.items`), the metric from the matrix (:mod:`suite.results.metrics`, one definition), and
averages over the drawn seeds. The interval is the 2.5–97.5 percentile of the resampled means.

Item draws depend only on a fixed seed and the sizes of the item sets, so two groups on the same sequence see
the same draws: their difference is a paired bootstrap over seeds × items.
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
    """``(resamples, n_seeds)`` indices of seeds drawn with replacement."""
    return np.random.default_rng([seed, 1]).integers(n_seeds, size=(resamples, n_seeds))


def percentile_interval(values: np.ndarray) -> tuple[float, float]:
    lo, hi = np.percentile(values, [2.5, 97.5])
    return float(lo), float(hi)


def over_seed_draws(per_seed: np.ndarray, seed: int = BOOTSTRAP_SEED) -> tuple[float, float]:
    """The interval of the mean over seeds drawn with replacement, one draw per item resample (row) of
    ``per_seed`` ``(resamples, seeds)``: the second level of the bootstrap."""
    draw = seed_draws(per_seed.shape[1], per_seed.shape[0], seed)
    return percentile_interval(np.take_along_axis(per_seed, draw, 1).mean(1))


def two_level_interval(scores: np.ndarray, resamples: int = RESAMPLES, seed: int = BOOTSTRAP_SEED,
                       levels: str = "both") -> tuple[float, float]:
    """The 95 % interval of the mean of a ``(seeds, items)`` score table, resampling ``levels``: ``seeds``,
    ``items`` or ``both`` (the suite's interval). The one-set case of :class:`ItemTable`, for tests and tables."""
    scores = np.asarray(scores, np.float64)
    s, n = scores.shape
    w = item_weights([n], resamples, seed)[0] if levels in ("items", "both") else np.full((resamples, n), 1.0 / n)
    per_seed = w @ scores.T  # (resamples, seeds)
    if levels == "items":
        return percentile_interval(per_seed.mean(1))
    return over_seed_draws(per_seed, seed)


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
        w = item_weights(self.sizes(), resamples, seed)
        t = len(self.tasks)
        acc = np.stack([np.einsum("bn,ksn->bks", w[d], x) for d, x in enumerate(self.tasks)], -1)
        ctl = {c: np.einsum("bn,ksn->bks", w[t + i], x) for i, (c, x) in enumerate(self.controls.items())}
        return acc, ctl


def json_key(rec: dict) -> tuple:
    """What must match for records to share test items: the sequence, its data manifests, the evaluation sample."""
    seq = rec["sequence"]
    return (seq["name"], seq.get("version"), tuple(sorted(seq.get("manifests", {}).items())),
            rec.get("config", {}).get("max_eval"))


def metric_per_seed(acc: np.ndarray, controls: dict[str, np.ndarray], name: str) -> np.ndarray:
    """``(resamples, seeds)`` values of an item metric from resampled accuracies."""
    if name == "zero_shot_retention":
        if not controls:
            return np.full(acc.shape[:2], np.nan)
        ratios = []
        for a in controls.values():
            ref = a[..., 0]
            ratios.append(np.where(ref > 0, a[..., -1] / np.where(ref > 0, ref, 1.0), np.nan))
        with np.errstate(invalid="ignore"):
            return np.nanmean(np.stack(ratios), 0)
    values = metrics.batch_aggregate(acc[..., 1:, :], acc[..., 0, :])[name]
    if values is None:
        return np.full(acc.shape[:2], np.nan)
    return values


class Resampled:
    """A group's item tables resampled once (cached), from which every item metric's interval follows."""

    def __init__(self, table: ItemTable, resamples: int = RESAMPLES, seed: int = BOOTSTRAP_SEED):
        self.table, self.resamples, self.seed = table, resamples, seed
        self.acc, self.controls = table.resampled_accuracies(resamples, seed)
        self._cache: dict[str, np.ndarray] = {}

    def per_seed(self, name: str) -> np.ndarray:
        if name not in self._cache:
            self._cache[name] = metric_per_seed(self.acc, self.controls, name)
        return self._cache[name]

    def interval(self, name: str) -> tuple[float, float] | None:
        v = self.per_seed(name)
        return None if np.isnan(v).any() else over_seed_draws(v, self.seed)


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
    return None if np.isnan(d).any() else over_seed_draws(d, a.seed)


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
           "over_seed_draws", "paired_interval", "percentile_interval", "seed_draws", "two_level_interval"]
