"""Grids of runs and their summary across seeds (mean ± 95% confidence interval, Student t)."""
from __future__ import annotations

import dataclasses
import json
from collections import defaultdict
from pathlib import Path

import numpy as np

from .records import load_record
from .runner import RunConfig, Runner

HEADLINE = ("transfer", "avg", "last", "bwt", "forgetting")


def sweep(base: RunConfig, methods: list[str], pets: list[str], seeds: list[int]) -> list[Path]:
    paths = []
    for method in methods:
        for pet in pets:
            for seed in seeds:
                cfg = dataclasses.replace(base, method=method, pet=None if pet == "none" else pet, seed=seed)
                runner = Runner(cfg)
                runner.run()
                paths.append(runner.out_path())
    return paths


def mean_ci(values: list[float]) -> tuple[float, float]:
    """Mean and half-width of the 95% CI (t distribution); half-width 0 for one value."""
    from scipy import stats

    v = np.asarray(values, dtype=float)
    if len(v) < 2:
        return float(v.mean()), 0.0
    return float(v.mean()), float(stats.t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v)))


def collect(paths: list[str]) -> list[dict]:
    files: list[Path] = []
    for p in map(Path, paths):
        files.extend(sorted(p.glob("*.json")) if p.is_dir() else [p])
    return [load_record(f) for f in files]


def group_key(rec: dict) -> tuple:
    return (rec["sequence"]["name"], rec["method"]["name"], rec["pet"]["kind"] or "-",
            json.dumps([rec["pet"]["options"], rec["method"]["options"]], sort_keys=True))


def summarize(records: list[dict]) -> list[dict]:
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in records:
        groups[group_key(r)].append(r)
    rows = []
    for (seq, method, pet, _), recs in sorted(groups.items()):
        row = {"sequence": seq, "method": method, "pet": pet, "seeds": sorted(r["seed"] for r in recs)}
        for k in HEADLINE:
            vals = [r["aggregates"][k] for r in recs if r["aggregates"].get(k) is not None]
            row[k] = mean_ci(vals) if vals else None
        rows.append(row)
    return rows


def summarize_table(paths: list[str]) -> str:
    rows = summarize(collect(paths))
    head = f"{'sequence':26s} {'method':9s} {'pet':8s} {'n':>2s} " + " ".join(f"{k:>14s}" for k in HEADLINE)
    out = [head]
    for r in rows:
        cells = [("n/a" if r[k] is None else f"{100 * r[k][0]:.1f}±{100 * r[k][1]:.1f}") for k in HEADLINE]
        out.append(f"{r['sequence']:26s} {r['method']:9s} {r['pet']:8s} {len(r['seeds']):2d} " + " ".join(f"{c:>14s}" for c in cells))
    return "\n".join(out)
