"""The intervals keep their promise at 5 seeds (suite/results/coverage.py, ``clsuite coverage``): the suite's
interval (Student-t over seeds ⊕ bootstrap over items) covers near 95 % where the former percentile bootstrap over
5 seeds did not, measured on a model where the truth is known and on a pool of seeds."""
import numpy as np
import pytest
from records_factory import make_record, reference, write

from suite.cli import main
from suite.results.analysis import t_half_width
from suite.results.coverage import finite_pool_nominal, pool_coverage, synthetic_coverage
from suite.results.uncertainty import ItemTable, Resampled, seeds_and_items, two_level_interval


def by_kind(cov):
    return {c.kind: c.covered for c in cov}


@pytest.mark.parametrize("seed_sd", [0.1, 1.0])
def test_the_suites_interval_covers_near_95_percent_where_the_percentile_bootstrap_does_not(seed_sd):
    cov = by_kind(synthetic_coverage(k=5, seed_sd=seed_sd, trials=300, resamples=300))
    assert 0.92 <= cov["t+items"] <= 0.99
    assert cov["bootstrap seeds"] < 0.88          # 1.96·√(4/5) against t's 2.78: about 85 % at best
    assert cov["t+items"] > cov["bootstrap seeds"] + 0.07


def test_the_interval_is_t_without_item_noise_and_never_narrower_than_a_level_alone():
    rng = np.random.default_rng(3)
    per_seed = np.array([0.61, 0.55, 0.58, 0.64, 0.52])
    lo, hi = seeds_and_items(per_seed, np.zeros((0, 5)))
    assert (hi - lo) / 2 == pytest.approx(t_half_width(per_seed))
    scores = (rng.random((5, 400)) < per_seed[:, None]).astype(float)
    width = {lv: np.subtract(*two_level_interval(scores, levels=lv)[::-1]) for lv in ("seeds", "items", "both")}
    assert width["both"] >= max(width["seeds"], width["items"])
    assert width["both"] <= width["seeds"] + width["items"]
    one_seed = seeds_and_items(per_seed[:1], rng.normal(0.6, 0.02, (200, 1)))
    assert one_seed[0] < 0.61 < one_seed[1]  # one seed: the item level alone, not nothing


def _pool(n_seeds: int, rng) -> Resampled:
    """A pool of ``n_seeds`` runs of one 2-task configuration: per seed a level drawn once, items shared."""
    level = rng.normal(0.6, 0.05, n_seeds)
    tasks = []
    for _ in range(2):
        steps = [np.zeros((n_seeds, 200)), (rng.random((n_seeds, 200)) < level[:, None]),
                 (rng.random((n_seeds, 200)) < level[:, None] - 0.1)]
        tasks.append(np.stack(steps, 1).astype(float))
    return Resampled(ItemTable(list(range(n_seeds)), tasks, {}, ("pool",)), resamples=300)


def test_pool_coverage_meets_the_finite_pool_reference_and_refuses_a_small_pool():
    pool = _pool(25, np.random.default_rng(0))
    cov = by_kind(pool_coverage(pool, "last", k=5, trials=400))
    assert cov["t+items"] >= finite_pool_nominal(25, 5) - 0.04
    assert cov["bootstrap seeds"] < cov["t seeds"]
    with pytest.raises(ValueError, match="at least 10"):
        pool_coverage(_pool(8, np.random.default_rng(1)), "last", k=5)


def test_coverage_verb_on_a_pool_of_records(tmp_path, capsys):
    base = reference("world-class-incremental", "seq", "lora")
    folder = write(tmp_path / "pool", [make_record(base, s, "seq", 0.01 * (s % 4)) for s in range(10)])
    assert main(["coverage", "--results", str(folder), "--seeds", "5", "--trials", "50", "--no-synthetic"]) == 0
    out = capsys.readouterr().out
    assert "world-class-incremental seq/lora last: 5 of a pool of 10" in out and "t+items" in out
    assert main(["coverage", "--results", str(folder), "--seeds", "6", "--no-synthetic"]) == 2
    assert "no configuration has 12 seeds or more" in capsys.readouterr().err
    assert main(["coverage", "--results", str(folder), "--metric", "hallucination_fpr", "--no-synthetic"]) == 2
    err = capsys.readouterr().err
    assert "--metric: hallucination_fpr: not a metric with an interval over test items" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
